"""Fused HyperAttention forward: sorted block-diagonal + masked sampled keys + LSE merge.

One program handles BLOCK_M consecutive rows of the LSH-sorted queries of one
(batch, kv-head). It runs FlashAttention's online softmax first over the keys
of its rows' sorted blocks (exact part: key block ``j`` for query block ``j``),
then over the sampled keys with their log-weights, masking the samples that
lie in the row's own block (already counted), and writes each row's output and
log-sum-exp back at the row's ORIGINAL position (the inverse permutation is
applied by the store). No partial result is written to memory in between.

The key tile, warps and pipeline stages are autotuned per head tile and dtype
over the candidates of :func:`forward_candidates` (all compiled for sm_90 and
sm_80 by tests/attn/test_aot.py). Precision: :mod:`..triton_utils`.

The PyTorch twin of this kernel is the torch path of
:func:`kernelsketch.attn.hyper.naive.hyper_noncausal` with ``hash_rounds=1``,
which computes the same function from the same hash and samples.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_utils import check_aligned, head_tile

LOG2E = 1.4426950408889634
BLOCK_M = 64  # query rows per program (the M of one wgmma warpgroup tile)
# Under the interpreter (tests on CPU) nothing can be timed: the first candidate runs.
_INTERPRET = triton.knobs.runtime.interpret


def forward_candidates(block_d: int, block_dv: int, itemsize: int) -> list[tuple]:
    """Autotuning candidates (BLOCK_N, num_warps, num_stages) of the forward kernel.

    From the compile metadata (tests/attn/test_aot.py): tiles up to 64 wide use
    few registers and little shared memory, one configuration; at 128 a 4-warp
    program sits at 255 registers on sm_80, so 8 warps, or 4 with a narrower
    key tile; at 256 (or float32 at 128) three stages overflow A100's shared
    memory, so two stages with 8 warps and a 32- or 64-key tile.
    """
    width = max(block_d, block_dv) * itemsize // 2  # in half-precision columns
    if width <= 64:
        return [(64, 4, 3)]
    if width <= 128:
        return [(64, 8, 3), (32, 4, 3), (64, 8, 2)]
    return [(32, 8, 2), (64, 8, 2)]


def _config(candidate: tuple) -> triton.Config:
    block_n, warps, stages = candidate
    return triton.Config({"BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


def _prune(configs, named_args, **kwargs):
    """The candidates of this launch's head tile and dtype (the first under the interpreter)."""
    cands = forward_candidates(kwargs["BLOCK_D"], kwargs["BLOCK_DV"],
                               named_args["Q"].element_size())
    return [_config(c) for c in (cands[:1] if _INTERPRET else cands)]


# Every candidate of every tile and dtype; _prune keeps those of the launch.
_ALL = [_config(c) for c in sorted({c for bd in (16, 32, 64, 128, 256) for itemsize in (2, 4)
                                    for c in forward_candidates(bd, bd, itemsize)})]


@triton.jit
def _online_softmax_step(s, v, m_i, l_i, acc):
    """FlashAttention's online-softmax update with base-2 logits ``s`` (masked = -inf).

    Rows whose running maximum is still -inf use 0 as shift, so they stay at
    l = 0, acc = 0 without NaN. ``p`` is rounded to v's dtype for the product.
    """
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="tf32")
    return m_new, l_i, acc


@triton.autotune(configs=_ALL, key=["BLOCK_D", "BLOCK_DV"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit(do_not_specialize=["R", "M", "S", "q_block", "k_block"])
def _hyper_fwd_kernel(
    Q, K, V, KS, VS, WS, BS, PERM, OUT, LSE,
    R, M, S, q_block, k_block, qk_scale, D, DV,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    # Pointers move to this head with 64-bit scalars; offsets inside a head are int32.
    Q, PERM, OUT, LSE = Q + bh * R * D, PERM + bh * R, OUT + bh * R * DV, LSE + bh * R
    K, V = K + bh * M * D, V + bh * M * DV
    KS, VS, WS, BS = KS + bh * S * D, VS + bh * S * DV, WS + bh * S, BS + bh * S
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + rows[:, None] * D + d[None, :], mask=row_ok[:, None] & (d[None, :] < D),
                other=0.0)
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
        k = tl.load(K + cols[:, None] * D + d[None, :], mask=col_ok[:, None] & (d[None, :] < D),
                    other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision="tf32") * qk_scale
        valid = ((cols // k_block)[None, :] == row_blk[:, None]) & col_ok[None, :]
        s = tl.where(valid, s, float("-inf"))
        v = tl.load(V + cols[:, None] * DV + dv[None, :],
                    mask=col_ok[:, None] & (dv[None, :] < DV), other=0.0)
        m_i, l_i, acc = _online_softmax_step(s, v, m_i, l_i, acc)

    # Sampled part: weighted keys outside the row's own block.
    for start in range(0, S, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < S
        k = tl.load(KS + cols[:, None] * D + d[None, :], mask=col_ok[:, None] & (d[None, :] < D),
                    other=0.0)
        w = tl.load(WS + cols, mask=col_ok, other=0.0)
        sb = tl.load(BS + cols, mask=col_ok, other=-1)
        s = tl.dot(q, tl.trans(k), input_precision="tf32") * qk_scale + (w * 1.4426950408889634)[None, :]
        valid = (sb[None, :] != row_blk[:, None]) & col_ok[None, :]
        s = tl.where(valid, s, float("-inf"))
        v = tl.load(VS + cols[:, None] * DV + dv[None, :],
                    mask=col_ok[:, None] & (dv[None, :] < DV), other=0.0)
        m_i, l_i, acc = _online_softmax_step(s, v, m_i, l_i, acc)

    nonzero = l_i > 0
    l_safe = tl.where(nonzero, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(nonzero, (m_i + tl.log2(l_safe)) / 1.4426950408889634, float("-inf"))
    orig = tl.load(PERM + rows, mask=row_ok, other=0)
    tl.store(OUT + orig[:, None] * DV + dv[None, :], out.to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & (dv[None, :] < DV))
    tl.store(LSE + orig, lse, mask=row_ok)


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused kernel.

    q_sorted [BH, R, D], k_sorted [BH, M, D], v_sorted [BH, M, Dv] (sorted by
    bucket, contiguous, one dtype: float32, float16 or bfloat16; D, Dv multiples of
    16 at most 256, 128 in float32: :mod:`..triton_utils`);
    k_sampled [BH, S, D], v_sampled [BH, S, Dv], log_weights [BH, S] float32,
    sample_blocks [BH, S] int32 (sorted key block of each sample); perm_q
    [BH, R] int64 (original row of each sorted row). Query row r belongs to
    block r // q_block, key column c to c // k_block.
    Returns out [BH, R, Dv] in v's dtype and lse [BH, R] float32, in the
    original row order.
    """
    BH, R, D = q_sorted.shape
    M, Dv = k_sorted.shape[1], v_sorted.shape[2]
    S = k_sampled.shape[1]
    check_aligned(D=D, Dv=Dv)
    out = torch.empty(BH, R, Dv, dtype=v_sorted.dtype, device=q_sorted.device)
    lse = torch.empty(BH, R, dtype=torch.float32, device=q_sorted.device)
    grid = (triton.cdiv(R, BLOCK_M), BH)
    _hyper_fwd_kernel[grid](
        q_sorted, k_sorted, v_sorted, k_sampled, v_sampled, log_weights, sample_blocks, perm_q,
        out, lse, R, M, S, q_block, k_block, scale * LOG2E, D, Dv,
        BLOCK_M=BLOCK_M, BLOCK_D=head_tile(D), BLOCK_DV=head_tile(Dv),
    )
    return out, lse
