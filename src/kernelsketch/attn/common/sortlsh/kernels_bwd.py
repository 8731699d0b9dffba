"""Backward of the fused HyperAttention kernel (FlashAttention-2 style).

The forward (:mod:`.kernels_fwd`) computes, for every LSH-sorted query row r,
a softmax over the keys of its sorted block and its uncovered weighted samples:

    s_rj = scale q_r·k_j + log w_j        (w_j = 1 for block keys)
    L_r  = log Σ_j exp(s_rj),   P_rj = exp(s_rj − L_r),   O_r = Σ_j P_rj v_j.

From the final O and L (nothing else is stored), with upstream gradients dO and
dL, ∂O_r/∂s_rj = P_rj (v_j − O_r) and ∂L_r/∂s_rj = P_rj give

    dS_rj = P_rj (dO_r·v_j − Δ_r),   Δ_r = dO_r·O_r − dL_r,
    dq_r = scale Σ_j dS_rj k_j,   dk_j = scale Σ_r dS_rj q_r,   dv_j = Σ_r P_rj dO_r.

The log-weights are constants of the estimator: no gradient flows to them.
Kernels (fp32 accumulation; P is recomputed from L tile by tile):

* ``_bwd_dq_kernel``: one program per tile of sorted query rows, the forward's
  two loops (its block's keys, then the samples outside its block); dq is
  stored at the row's original position.
* ``_bwd_dkdv_kernel`` (``SAMPLED=False``): one program per tile of sorted
  keys, looping over the query rows of the matching query block(s); dk/dv are
  stored at the key's original position (the un-permutation).
* ``_bwd_dkdv_kernel`` (``SAMPLED=True``): one program per tile of sampled
  keys and chunk of query rows (every row sees every sample, so the rows are
  split across programs for parallelism), with the pairs of the row's own
  block masked; the chunks' partial gradients are summed and scatter-added
  into dk/dv at the sampled indices (a key sampled several times accumulates
  every copy).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_utils import check_aligned, head_tile
from .kernels_fwd import LOG2E

# Programs aimed at for the sampled-key gradients (a few per SM on current GPUs).
SAMPLE_PROGRAMS = 512
_INTERPRET = triton.knobs.runtime.interpret  # decorated for Triton's interpreter (tests)


def backward_config(block_d: int, block_dv: int, itemsize: int) -> dict:
    """Tiles, warps and stages of the backward kernels for a head tile and dtype.

    ``dq``: rows per program and keys per step; ``dkdv``: keys per program and
    rows per step; ``split``: dk and dv in two launches. From the compile
    metadata (tests/attn/test_aot.py): 64x64 tiles in three stages fit heads up
    to 128 in half precision; wider tiles (heads of 256, float32 heads of 128)
    overflow both chips' shared memory at 64x64 in three stages and spill
    registers with two [64, 256] float32 accumulators, so their steps take 32
    rows / keys in two stages and dk, dv are computed in separate launches.
    Programs keep 64 rows (keys): the M of a wgmma tile on H100.
    """
    width = max(block_d, block_dv) * itemsize // 2  # in half-precision columns
    if width <= 64:
        return {"dq": (64, 64), "dkdv": (64, 64), "warps": 4, "stages": 3, "split": False}
    if width <= 128:
        return {"dq": (64, 64), "dkdv": (64, 64), "warps": 8, "stages": 3, "split": False}
    return {"dq": (64, 32), "dkdv": (64, 32), "warps": 8, "stages": 2, "split": True}


@triton.jit
def _dq_step(dq, q, do, lse2, delta, k, v, bias, valid, qk_scale):
    # dq += dS k for one tile of keys (scores in log2 units, P from the stored lse).
    s = tl.dot(q, tl.trans(k), input_precision="tf32") * qk_scale + bias[None, :]
    p = tl.where(valid, tl.exp2(s - lse2[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision="tf32")
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision="tf32")


@triton.jit(do_not_specialize=["R", "M", "S", "q_block", "k_block"])
def _bwd_dq_kernel(
    Q, K, V, KS, VS, WS2, BS, DO, LSE2, DELTA, PERM, DQ,
    R, M, S, q_block, k_block, qk_scale, scale, D, DV,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    # Pointers move to this head with 64-bit scalars; offsets inside a head are int32.
    Q, DO, DQ = Q + bh * R * D, DO + bh * R * DV, DQ + bh * R * D
    LSE2, DELTA, PERM = LSE2 + bh * R, DELTA + bh * R, PERM + bh * R
    K, V = K + bh * M * D, V + bh * M * DV
    KS, VS, WS2, BS = KS + bh * S * D, VS + bh * S * DV, WS2 + bh * S, BS + bh * S
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + rows[:, None] * D + d[None, :], mask=row_ok[:, None] & (d[None, :] < D),
                other=0.0)
    do = tl.load(DO + rows[:, None] * DV + dv[None, :],
                 mask=row_ok[:, None] & (dv[None, :] < DV), other=0.0)
    lse2 = tl.load(LSE2 + rows, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
    row_blk = rows // q_block
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # Keys of the sorted blocks of this tile's rows (the forward's exact part).
    first_blk = (pid_m * BLOCK_M) // q_block
    last_blk = (tl.minimum(pid_m * BLOCK_M + BLOCK_M, R) - 1) // q_block
    k_lo = first_blk * k_block
    k_hi = tl.minimum((last_blk + 1) * k_block, M)
    no_bias = tl.zeros([BLOCK_N], tl.float32)
    for start in range(k_lo, k_hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < k_hi
        k = tl.load(K + cols[:, None] * D + d[None, :], mask=col_ok[:, None] & (d[None, :] < D),
                    other=0.0)
        v = tl.load(V + cols[:, None] * DV + dv[None, :],
                    mask=col_ok[:, None] & (dv[None, :] < DV), other=0.0)
        valid = ((cols // k_block)[None, :] == row_blk[:, None]) & col_ok[None, :] & row_ok[:, None]
        dq = _dq_step(dq, q, do, lse2, delta, k, v, no_bias, valid, qk_scale)

    # Sampled keys outside the row's own block.
    for start in range(0, S, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < S
        k = tl.load(KS + cols[:, None] * D + d[None, :], mask=col_ok[:, None] & (d[None, :] < D),
                    other=0.0)
        v = tl.load(VS + cols[:, None] * DV + dv[None, :],
                    mask=col_ok[:, None] & (dv[None, :] < DV), other=0.0)
        bias = tl.load(WS2 + cols, mask=col_ok, other=0.0)
        sb = tl.load(BS + cols, mask=col_ok, other=-1)
        valid = (sb[None, :] != row_blk[:, None]) & col_ok[None, :] & row_ok[:, None]
        dq = _dq_step(dq, q, do, lse2, delta, k, v, bias, valid, qk_scale)

    orig = tl.load(PERM + rows, mask=row_ok, other=0)
    tl.store(DQ + orig[:, None] * D + d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & (d[None, :] < D))


@triton.jit(do_not_specialize=["R", "NX", "q_block", "k_block", "rows_per_split"])
def _bwd_dkdv_kernel(
    Q, DO, LSE2, DELTA, KX, VX, WX2, BX, DST, DK, DVX,
    R, NX, q_block, k_block, rows_per_split, qk_scale, scale, D, DV,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, SAMPLED: tl.constexpr,
    WITH_DK: tl.constexpr, WITH_DV: tl.constexpr,
):
    # One tile of NX keys: the sorted keys (SAMPLED=False, their rows are the
    # matching query blocks) or the sampled keys (SAMPLED=True, the rows of
    # chunk program_id(2), whose partial sums go to DK[chunk], DVX[chunk]).
    # WITH_DK / WITH_DV: which of the two gradients this launch computes (wide
    # heads: one each, two [BLOCK_N, 256] float32 accumulators spill registers).
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    out_bh = tl.program_id(2).to(tl.int64) * tl.num_programs(1) + bh
    Q, DO, LSE2, DELTA = Q + bh * R * D, DO + bh * R * DV, LSE2 + bh * R, DELTA + bh * R
    KX, VX, WX2, BX, DST = KX + bh * NX * D, VX + bh * NX * DV, WX2 + bh * NX, BX + bh * NX, DST + bh * NX
    DK, DVX = DK + out_bh * NX * D, DVX + out_bh * NX * DV
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < NX
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    k = tl.load(KX + cols[:, None] * D + d[None, :], mask=col_ok[:, None] & (d[None, :] < D),
                other=0.0)
    if SAMPLED:
        bias = tl.load(WX2 + cols, mask=col_ok, other=0.0)
        col_blk = tl.load(BX + cols, mask=col_ok, other=-1)
        r_lo = tl.program_id(2) * rows_per_split
        r_hi = tl.minimum(r_lo + rows_per_split, R)
    else:
        bias = tl.zeros([BLOCK_N], tl.float32)
        col_blk = cols // k_block
        first_blk = (pid_n * BLOCK_N) // k_block
        last_blk = (tl.minimum(pid_n * BLOCK_N + BLOCK_N, NX) - 1) // k_block
        r_lo = first_blk * q_block
        r_hi = tl.minimum((last_blk + 1) * q_block, R)
    if WITH_DK:
        v = tl.load(VX + cols[:, None] * DV + dv[None, :],
                    mask=col_ok[:, None] & (dv[None, :] < DV), other=0.0)
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if WITH_DV:
        dval = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for start in range(r_lo, r_hi, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < r_hi
        q = tl.load(Q + rows[:, None] * D + d[None, :], mask=row_ok[:, None] & (d[None, :] < D),
                    other=0.0)
        do = tl.load(DO + rows[:, None] * DV + dv[None, :],
                     mask=row_ok[:, None] & (dv[None, :] < DV), other=0.0)
        lse2 = tl.load(LSE2 + rows, mask=row_ok, other=0.0)
        same = col_blk[:, None] == (rows // q_block)[None, :]
        if SAMPLED:
            same = ~same
        valid = same & col_ok[:, None] & row_ok[None, :]
        # Transposed scores [keys, rows], as in FlashAttention-2's dK/dV loop.
        st = tl.dot(k, tl.trans(q), input_precision="tf32") * qk_scale + bias[:, None]
        pt = tl.where(valid, tl.exp2(st - lse2[None, :]), 0.0)
        if WITH_DV:
            dval += tl.dot(pt.to(do.dtype), do, input_precision="tf32")
        if WITH_DK:
            delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
            dpt = tl.dot(v, tl.trans(do), input_precision="tf32")
            ds_t = pt * (dpt - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision="tf32")

    if SAMPLED:
        dst_rows = cols
    else:
        dst_rows = tl.load(DST + cols, mask=col_ok, other=0)
    if WITH_DK:
        tl.store(DK + dst_rows[:, None] * D + d[None, :], dk * scale,
                 mask=col_ok[:, None] & (d[None, :] < D))
    if WITH_DV:
        tl.store(DVX + dst_rows[:, None] * DV + dv[None, :], dval,
                 mask=col_ok[:, None] & (dv[None, :] < DV))


def _sorted(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Rows of x [BH, R, ...] in the sorted order perm [BH, R]."""
    idx = perm.reshape(*perm.shape, *([1] * (x.dim() - 2))).expand(*perm.shape, *x.shape[2:])
    return torch.gather(x, 1, idx).contiguous()


def hyper_fused_backward(
    dout: torch.Tensor,
    dlse: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    q_sorted: torch.Tensor,
    k_sorted: torch.Tensor,
    v_sorted: torch.Tensor,
    k_sampled: torch.Tensor,
    v_sampled: torch.Tensor,
    log_weights: torch.Tensor,
    sample_blocks: torch.Tensor,
    perm_q: torch.Tensor,
    perm_k: torch.Tensor,
    sample_idx: torch.Tensor,
    *,
    q_block: int,
    k_block: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`.kernels_fwd.hyper_fused_forward` w.r.t. q, k and v.

    Parameters
    ----------
    dout : [BH, R, Dv], dlse : [BH, R]
        Upstream gradients of ``out`` and ``lse`` (original row order).
    out : [BH, R, Dv], lse : [BH, R] float32
        The forward's results (original row order).
    q_sorted, k_sorted, v_sorted, k_sampled, v_sampled, log_weights,
    sample_blocks, perm_q, q_block, k_block, scale
        The forward's arguments (see ``hyper_fused_forward``).
    perm_k : [BH, M] int64
        Original key of each sorted key.
    sample_idx : [BH, S] int64
        Original key of each sample (duplicates allowed).

    Returns
    -------
    dq : [BH, R, D] (original row order), dk : [BH, M, D], dv : [BH, M, Dv]
    (original key order), in the dtypes of q, k and v; accumulated in float32.
    """
    BH, R, D = q_sorted.shape
    M, Dv = k_sorted.shape[1], v_sorted.shape[2]
    S = k_sampled.shape[1]
    check_aligned(D=D, Dv=Dv)
    dev = q_sorted.device
    # Δ_r = dO_r·O_r − dL_r: the lse gradient enters every dS_rj as + P_rj dL_r.
    delta = (dout.float() * out.float()).sum(-1) - dlse.float()
    do_s = _sorted(dout.to(v_sorted.dtype), perm_q)
    # The kernels work in log2 units (exp2): lse and log-weights are converted here.
    lse2_s = _sorted(lse.float() * LOG2E, perm_q)
    log2_weights = (log_weights * LOG2E).contiguous()
    delta_s = _sorted(delta, perm_q)

    block_d, block_dv = head_tile(D), head_tile(Dv)
    cfg = backward_config(block_d, block_dv, q_sorted.element_size())
    common = {"BLOCK_D": block_d, "BLOCK_DV": block_dv, "num_warps": cfg["warps"],
              "num_stages": cfg["stages"]}
    qk_scale = scale * LOG2E

    block_m, block_n = cfg["dq"]
    dq = torch.empty(BH, R, D, dtype=q_sorted.dtype, device=dev)
    _bwd_dq_kernel[(triton.cdiv(R, block_m), BH)](
        q_sorted, k_sorted, v_sorted, k_sampled, v_sampled, log2_weights, sample_blocks,
        do_s, lse2_s, delta_s, perm_q, dq, R, M, S, q_block, k_block, qk_scale, scale, D, Dv,
        BLOCK_M=block_m, BLOCK_N=block_n, **common)

    # dk, dv of the sorted keys (perm_k is a permutation: every key is written once), then
    # the sampled keys' partial sums per chunk of rows, scatter-added at the sampled indices.
    block_n, block_m = cfg["dkdv"]
    parts = [(True, False), (False, True)] if cfg["split"] else [(True, True)]
    dk = torch.empty(BH, M, D, dtype=torch.float32, device=dev)
    dv = torch.empty(BH, M, Dv, dtype=torch.float32, device=dev)
    for with_dk, with_dv in parts:
        _bwd_dkdv_kernel[(triton.cdiv(M, block_n), BH)](
            q_sorted, do_s, lse2_s, delta_s, k_sorted, v_sorted, log2_weights, sample_blocks,
            perm_k, dk, dv, R, M, q_block, k_block, R, qk_scale, scale, D, Dv,
            BLOCK_M=block_m, BLOCK_N=block_n, SAMPLED=False, WITH_DK=with_dk, WITH_DV=with_dv,
            **common)
    if S:
        tiles = triton.cdiv(S, block_n)
        splits = max(1, min(triton.cdiv(R, block_m), SAMPLE_PROGRAMS // (tiles * BH)))
        rows_per_split = max(1, triton.cdiv(triton.cdiv(R, splits), block_m)) * block_m
        splits = triton.cdiv(R, rows_per_split)
        dk_s = torch.empty(splits, BH, S, D, dtype=torch.float32, device=dev)
        dv_s = torch.empty(splits, BH, S, Dv, dtype=torch.float32, device=dev)
        for with_dk, with_dv in parts:
            _bwd_dkdv_kernel[(tiles, BH, splits)](
                q_sorted, do_s, lse2_s, delta_s, k_sampled, v_sampled, log2_weights,
                sample_blocks, sample_idx, dk_s, dv_s, R, S, q_block, k_block, rows_per_split,
                qk_scale, scale, D, Dv, BLOCK_M=block_m, BLOCK_N=block_n, SAMPLED=True,
                WITH_DK=with_dk, WITH_DV=with_dv, **common)
        dk.scatter_add_(1, sample_idx.unsqueeze(-1).expand(BH, S, D), dk_s.sum(0))
        dv.scatter_add_(1, sample_idx.unsqueeze(-1).expand(BH, S, Dv), dv_s.sum(0))
    return dq, dk.to(k_sorted.dtype), dv.to(v_sorted.dtype)
