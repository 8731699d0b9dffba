"""Causal PolySketch attention through the Triton kernels of :mod:`.kernels`: one
autograd Function over the forward and backward launches (CUDA; the tests also
run it on CPU through Triton's interpreter). The gate that decides when the
method takes it is :func:`.method.fused_supported`.
"""

from __future__ import annotations

import torch

from ..common.triton_utils import HALF, check_head_dims, pad_head
from . import kernels


class _PolySketchCausal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, fq, fk, degree, block_size):
        ctx.feature_dtypes = (fq.dtype, fk.dtype)
        ctx.dims = (q.shape[-1], v.shape[-1])
        # Head dimensions padded to a multiple of 16 (zero columns, dropped from the results).
        q, k, v = (pad_head(t).contiguous() for t in (q, k, v))
        fq, fk = fq.float().contiguous(), fk.float().contiguous()
        out, den, h, z = kernels.polysketch_forward(q, k, v, fq, fk, degree=degree,
                                                    block_size=block_size)
        ctx.save_for_backward(q, k, v, fq, fk, out, den, h, z)
        ctx.degree, ctx.block_size = degree, block_size
        return out[..., : ctx.dims[1]], den

    @staticmethod
    def backward(ctx, dout, dden):
        q, k, v, fq, fk, out, den, h, z = ctx.saved_tensors
        D, Dv = ctx.dims
        dout = pad_head(dout)
        g = 1.0 / (1.0 + den)
        # A = dout / (1 + den) meets v and k in products: in their dtype, like dO in FlashAttention.
        ga = (dout.float() * g.unsqueeze(-1)).to(v.dtype).contiguous()
        gb = -(dout.float() * out).sum(-1) * g
        if dden is not None:
            gb = gb + dden.float()
        dq, dk, dv, dfq, dfk = kernels.polysketch_backward(
            q, k, v, fq, fk, ga, gb.contiguous(), h, z, degree=ctx.degree,
            block_size=ctx.block_size)
        fq_dtype, fk_dtype = ctx.feature_dtypes
        return (dq[..., :D].to(q.dtype), dk[..., :D].to(k.dtype), dv[..., :Dv].to(v.dtype),
                dfq.to(fq_dtype), dfk.to(fk_dtype), None, None)


def check_fused_inputs(q, k, v, fq, fk, *, degree: int, block_size: int) -> None:
    """ValueError / TypeError naming what :func:`polysketch_causal` cannot take."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or fq.dim() != 4 or fk.dim() != 4:
        raise ValueError("q, k, v, fq, fk must be 4-D [B, H, N, .], got "
                         f"{[tuple(t.shape) for t in (q, k, v, fq, fk)]}")
    B, Hq, N, D = q.shape
    Hkv, Dv, r = k.shape[1], v.shape[-1], fq.shape[-1]
    if k.shape != (B, Hkv, N, D) or v.shape[:3] != (B, Hkv, N):
        raise ValueError(f"k must be [B, Hkv, N, D] = [{B}, Hkv, {N}, {D}] and v [B, Hkv, N, Dv] "
                         f"(N == M), got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"q heads ({Hq}) must be a multiple of k/v heads ({Hkv})")
    if fq.shape[:3] != (B, Hq, N) or fk.shape != (B, Hkv, N, r):
        raise ValueError(f"fq must be [B, Hq, N, r] and fk [B, Hkv, N, r], got "
                         f"{tuple(fq.shape)}, {tuple(fk.shape)}")
    if not (q.dtype == k.dtype == v.dtype and q.dtype in (torch.float32, *HALF)):
        raise TypeError("q, k, v must share one dtype of float32, float16, bfloat16, got "
                        f"{q.dtype}, {k.dtype}, {v.dtype}")
    check_head_dims("polysketch", q.dtype, D=D, Dv=Dv)
    if not (16 <= r <= 256 and r & (r - 1) == 0):
        raise ValueError(f"the sketch size r (fq.shape[-1]) must be a power of two in [16, 256], "
                         f"got {r}")
    if not (isinstance(degree, int) and degree >= 2 and degree % 2 == 0):
        raise ValueError(f"degree must be an even int >= 2, got {degree!r}")
    if not (isinstance(block_size, int) and block_size > 0 and block_size % kernels.TILE == 0):
        raise ValueError(f"block_size must be a positive multiple of {kernels.TILE} for the "
                         f"Triton kernels, got {block_size!r}")


def polysketch_causal(q, k, v, fq, fk, *, degree: int, block_size: int):
    """Causal PolySketch attention with exact local blocks (N == M), Triton forward/backward.

    Parameters
    ----------
    q : [B, Hq, N, D] scaled, normalised queries; k : [B, Hkv, N, D]; v : [B, Hkv, N, Dv]
        one dtype: float16 / bfloat16 (tensor-core products, float32 accumulation) or
        float32 (TF32 products: :mod:`..common.triton_utils`); D, Dv <= 128.
    fq, fk : [B, Hq, N, r] / [B, Hkv, N, r] their sketch features φ (r a power of two in
        [16, 256]; used in float32).
    degree : even p >= 2; block_size : b, a multiple of 64 (the kernels' tile).

    Returns
    -------
    out [B, Hq, N, Dv] float32 (= num / (1 + den)) and den [B, Hq, N] float32,
    both differentiable with respect to all five inputs.

    Raises ValueError / TypeError for inputs the kernels do not take
    (:func:`check_fused_inputs`); :func:`.method.fused_eligible` sends those to
    the torch path instead.
    """
    check_fused_inputs(q, k, v, fq, fk, degree=degree, block_size=block_size)
    return _PolySketchCausal.apply(q, k, v, fq, fk, degree, block_size)
