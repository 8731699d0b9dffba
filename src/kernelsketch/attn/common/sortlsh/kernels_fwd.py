"""Fused HyperAttention forward: sorted block-diagonal + masked sampled keys + LSE merge.

One program handles BLOCK_M consecutive rows of the LSH-sorted queries of one
(batch, kv-head). It runs FlashAttention's online softmax first over the keys
of its rows' sorted blocks (exact part: key block ``j`` for query block ``j``),
then over the sampled keys with their log-weights, masking the samples that
lie in the row's own block (already counted), and writes each row's output and
log-sum-exp back at the row's ORIGINAL position (the inverse permutation is
applied by the store). No partial result is written to memory in between.

The PyTorch twin of this kernel is the torch path of
:func:`kernelsketch.attn.hyper.naive.hyper_noncausal` with ``hash_rounds=1``,
which computes the same function from the same hash and samples.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _online_softmax_step(s, v, m_i, l_i, acc):
    """FlashAttention's online-softmax update with base-2 logits ``s`` (masked = -inf).

    Rows whose running maximum is still -inf use 0 as shift, so they stay at
    l = 0, acc = 0 without NaN.
    """
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _hyper_fwd_kernel(
    Q, K, V, KS, VS, WS, BS, PERM, OUT, LSE,
    R, M, S, q_block, k_block, qk_scale,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + bh * R * D + rows[:, None] * D + d[None, :],
                mask=row_ok[:, None] & (d[None, :] < D), other=0.0)
    row_blk = rows // q_block
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)

    # Exact part: the keys of the sorted blocks of this tile's rows.
    first_blk = (pid_m * BLOCK_M) // q_block
    last_blk = (tl.minimum(pid_m * BLOCK_M + BLOCK_M, R) - 1) // q_block
    k_lo = first_blk * k_block
    k_hi = tl.minimum((last_blk + 1) * k_block, M)
    for start in range(k_lo, k_hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < k_hi
        k = tl.load(K + bh * M * D + cols[:, None] * D + d[None, :],
                    mask=col_ok[:, None] & (d[None, :] < D), other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        valid = ((cols // k_block)[None, :] == row_blk[:, None]) & col_ok[None, :]
        s = tl.where(valid, s, float("-inf"))
        v = tl.load(V + bh * M * DV + cols[:, None] * DV + dv[None, :],
                    mask=col_ok[:, None] & (dv[None, :] < DV), other=0.0)
        m_i, l_i, acc = _online_softmax_step(s, v, m_i, l_i, acc)

    # Sampled part: weighted keys outside the row's own block.
    for start in range(0, S, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < S
        k = tl.load(KS + bh * S * D + cols[:, None] * D + d[None, :],
                    mask=col_ok[:, None] & (d[None, :] < D), other=0.0)
        w = tl.load(WS + bh * S + cols, mask=col_ok, other=0.0)
        sb = tl.load(BS + bh * S + cols, mask=col_ok, other=-1)
        s = tl.dot(q, tl.trans(k)) * qk_scale + (w * 1.4426950408889634)[None, :]
        valid = (sb[None, :] != row_blk[:, None]) & col_ok[None, :]
        s = tl.where(valid, s, float("-inf"))
        v = tl.load(VS + bh * S * DV + cols[:, None] * DV + dv[None, :],
                    mask=col_ok[:, None] & (dv[None, :] < DV), other=0.0)
        m_i, l_i, acc = _online_softmax_step(s, v, m_i, l_i, acc)

    nonzero = l_i > 0
    l_safe = tl.where(nonzero, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(nonzero, (m_i + tl.log2(l_safe)) / 1.4426950408889634, float("-inf"))
    orig = tl.load(PERM + bh * R + rows, mask=row_ok, other=0)
    tl.store(OUT + bh * R * DV + orig[:, None] * DV + dv[None, :], out.to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & (dv[None, :] < DV))
    tl.store(LSE + bh * R + orig, lse, mask=row_ok)


def hyper_fused_forward(
    q_sorted: torch.Tensor,
    k_sorted: torch.Tensor,
    v_sorted: torch.Tensor,
    k_sampled: torch.Tensor,
    v_sampled: torch.Tensor,
    log_weights: torch.Tensor,
    sample_blocks: torch.Tensor,
    perm_q: torch.Tensor,
    *,
    q_block: int,
    k_block: int,
    scale: float,
    block_m: int = 64,
    block_n: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused kernel.

    q_sorted [BH, R, D], k_sorted [BH, M, D], v_sorted [BH, M, Dv] (sorted by
    bucket, contiguous); k_sampled [BH, S, D], v_sampled [BH, S, Dv],
    log_weights [BH, S] float32, sample_blocks [BH, S] int32 (sorted key block
    of each sample); perm_q [BH, R] int64 (original row of each sorted row).
    Query row r belongs to block r // q_block, key column c to c // k_block.
    Returns out [BH, R, Dv] in v's dtype and lse [BH, R] float32, in the
    original row order.
    """
    BH, R, D = q_sorted.shape
    M, Dv = k_sorted.shape[1], v_sorted.shape[2]
    S = k_sampled.shape[1]
    out = torch.empty(BH, R, Dv, dtype=v_sorted.dtype, device=q_sorted.device)
    lse = torch.empty(BH, R, dtype=torch.float32, device=q_sorted.device)
    block_d = max(16, triton.next_power_of_2(D))
    block_dv = max(16, triton.next_power_of_2(Dv))
    grid = (triton.cdiv(R, block_m), BH)
    _hyper_fwd_kernel[grid](
        q_sorted, k_sorted, v_sorted, k_sampled, v_sampled, log_weights, sample_blocks, perm_q,
        out, lse, R, M, S, q_block, k_block, scale * LOG2E,
        D=D, DV=Dv, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_DV=block_dv,
    )
    return out, lse
