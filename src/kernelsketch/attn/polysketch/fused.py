"""Causal PolySketch attention through the Triton kernels of :mod:`.kernels`: one
autograd Function over the forward and backward kernels (CUDA; ``TRITON_INTERPRET=1``
in tests). The gate that decides when it runs is :func:`.method.fused_supported`.
"""

from __future__ import annotations

import torch
import triton

from ..common.triton_utils import dot_precision, num_warps
from .kernels import block_states, bwd_kv_kernel, bwd_q_kernel, fwd_kernel


def tile_rows(block_size: int) -> int:
    """Rows per program tile: 64, or the block size when it is smaller."""
    return min(64, block_size)


class _PolySketchCausal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, fq, fk, degree, block_size, tile):
        B, Hq, N, D = q.shape
        Hkv, Dv, R = k.shape[1], v.shape[-1], fq.shape[-1]
        G, BM, prec = Hq // Hkv, tile, dot_precision(v.dtype)
        ctx.feature_dtypes = (fq.dtype, fk.dtype)
        q, k, v = (t.contiguous() for t in (q, k, v))
        fq, fk = fq.float().contiguous(), fk.float().contiguous()
        h, z = block_states(fk, v, None, heads_out=B * Hkv, src_g=1, n=N, block_size=block_size,
                       tile=BM, reverse=False, precision=prec)
        out = torch.empty(B, Hq, N, Dv, device=q.device, dtype=torch.float32)
        den = torch.empty(B, Hq, N, device=q.device, dtype=torch.float32)
        nb = h.shape[1]
        fwd_kernel[(triton.cdiv(N, BM), B * Hq)](
            q, k, v, fq, h, z, out, den, N, G, nb, D=D, DV=Dv, R=R, P=degree, BLOCK=block_size,
            BM=BM, DOT=prec, num_warps=num_warps(D, Dv))
        ctx.save_for_backward(q, k, v, fq, fk, out, den, h, z)
        ctx.degree, ctx.block_size, ctx.tile = degree, block_size, tile
        return out, den

    @staticmethod
    def backward(ctx, dout, dden):
        q, k, v, fq, fk, out, den, h, z = ctx.saved_tensors
        B, Hq, N, D = q.shape
        Hkv, Dv, R = k.shape[1], v.shape[-1], fq.shape[-1]
        G, b = Hq // Hkv, ctx.block_size
        BM, prec, nb = ctx.tile, dot_precision(v.dtype), h.shape[1]
        g = 1.0 / (1.0 + den)
        ga = (dout.float() * g.unsqueeze(-1)).contiguous()
        gb = -(dout.float() * out).sum(-1) * g
        if dden is not None:
            gb = gb + dden.float()
        gb = gb.contiguous()
        rs, rz = block_states(fq, ga, gb, heads_out=B * Hkv, src_g=G, n=N, block_size=b, tile=BM,
                         reverse=True, precision=prec)
        dq = torch.empty(B, Hq, N, D, device=q.device, dtype=torch.float32)
        dfq = torch.empty(B, Hq, N, R, device=q.device, dtype=torch.float32)
        bwd_q_kernel[(triton.cdiv(N, BM), B * Hq)](
            q, k, v, fq, ga, gb, h, z, dq, dfq, N, G, nb, D=D, DV=Dv, R=R, P=ctx.degree,
            BLOCK=b, BM=BM, DOT=prec, num_warps=num_warps(D, Dv))
        dk = torch.empty(B, Hkv, N, D, device=q.device, dtype=torch.float32)
        dv = torch.empty(B, Hkv, N, Dv, device=q.device, dtype=torch.float32)
        dfk = torch.empty(B, Hkv, N, R, device=q.device, dtype=torch.float32)
        bwd_kv_kernel[(triton.cdiv(N, BM), B * Hkv)](
            q, k, v, fk, ga, gb, rs, rz, dk, dv, dfk, N, G, nb, D=D, DV=Dv, R=R, P=ctx.degree,
            BLOCK=b, BM=BM, DOT=prec, num_warps=num_warps(D, Dv))
        fq_dtype, fk_dtype = ctx.feature_dtypes
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dfq.to(fq_dtype),
                dfk.to(fk_dtype), None, None, None)


def polysketch_causal(q, k, v, fq, fk, *, degree: int, block_size: int, tile: int | None = None):
    """Causal PolySketch attention with exact local blocks (N == M), Triton forward/backward.

    Parameters
    ----------
    q : [B, Hq, N, D] scaled, normalised queries; k : [B, Hkv, N, D]; v : [B, Hkv, N, Dv]
        (same dtype: float32, or bfloat16/float16 for tensor-core products);
    fq, fk : [B, Hq, N, r] / [B, Hkv, N, r] their sketch features φ;
    degree : even p; block_size : b (power of two >= 16);
    tile : rows per program, a power of two >= 16 dividing b (default min(64, b)).

    Returns
    -------
    out [B, Hq, N, Dv] float32 (= num / (1 + den)) and den [B, Hq, N] float32,
    both differentiable with respect to all five inputs.
    """
    tile = tile_rows(block_size) if tile is None else tile
    if not (tile >= 16 and tile & (tile - 1) == 0 and block_size % tile == 0):
        raise ValueError(f"tile must be a power of two >= 16 dividing block_size={block_size}, "
                         f"got {tile}")
    return _PolySketchCausal.apply(q, k, v, fq, fk, degree, block_size, tile)
