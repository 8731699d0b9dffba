"""``method="polysketch"``: sketched polynomial attention (PolySketchFormer, arXiv 2310.01655).

    out_i = Σ_j w̃_ij v_j / (1 + Σ_j w̃_ij),   w̃_ij = (φ(q'_i)·φ(k'_j))²  ≈ (q'_i·k'_j)^p,

with q' = sqrt(scale)·q, k' = sqrt(scale)·k; causal through the block
algorithm (§4) with exact local blocks, O(N (b D + r² Dv)). The fused Triton
kernels (:mod:`.fused`) run causal CUDA inputs; the torch path
(:mod:`.naive`) everything else. Theory: docs/polysketch.md.
"""

from __future__ import annotations

import math

import torch

from ..common.exact import warn_no_speedup
from ..common.merge import accumulation_dtype
from ..common.spec import MethodSpec
from ..common.triton_utils import HALF, max_head_dim, tf32_allowed, triton_available
from .config import LEARNED, PolySketchConfig
from .features import PolySketchFeatures
from .naive import _causal_torch, _noncausal_torch, _quadratic_torch, product_dtype, use_quadratic
from .polynomial import bounded_inputs, in_range, layer_norm_qk, normalize_output

# Causal bfloat16 calls on CPU with fewer queries warn with NoSpeedupWarning: SDPA's
# bfloat16 kernel is 2.5-3x its float32 one, and this path's bfloat16 products were measured
# (idle, 2 threads) at parity with it at 4096 queries (0.87-0.98x), faster at 6144
# (1.06-1.54x) and 8192 (1.51-1.62x) (BENCHMARKS.md). float16 runs the float32 path (float16
# products are no faster on CPU) against an SDPA as slow as float32's: 1.5-1.7x at 4096,
# no warning.
CPU_CAUSAL_BREAK_EVEN_BF16 = 6144


def fused_eligible(q, k, v, fq, *, block_size, exact_local) -> bool:
    """Whether the fused kernels handle these inputs, whatever the device: float32 q (the
    scaled, normalised queries; float64 stays on the torch path) with v in float16 /
    bfloat16, or in float32 when torch computes float32 matmuls in TF32 (the kernels'
    float32 products are TF32: :mod:`..common.triton_utils`); N == M, exact local blocks,
    D, Dv <= 128, r a power of two in [16, 256] and a block size that is a multiple of 64
    (the kernels' tile). Everything else runs on the torch path (:mod:`.naive`)."""
    r = fq.shape[-1]
    return (
        q.dtype == torch.float32
        and (v.dtype in HALF or (v.dtype == torch.float32 and tf32_allowed()))
        and exact_local
        and q.shape[2] == k.shape[2]
        and max(q.shape[-1], v.shape[-1]) <= max_head_dim("polysketch", v.dtype)
        and 16 <= r <= 256 and r & (r - 1) == 0
        and block_size % 64 == 0
    )


def fused_supported(q, k, v, fq, *, block_size, exact_local) -> bool:
    """Whether the fused kernels run these inputs: CUDA tensors, Triton imports, and
    :func:`fused_eligible`."""
    return triton_available() and q.is_cuda and fused_eligible(
        q, k, v, fq, block_size=block_size, exact_local=exact_local)


def sketched_polynomial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    features: PolySketchFeatures,
    *,
    degree: int,
    block_size: int,
    exact_local: bool,
    scale: float,
    is_causal: bool,
    need_lse: bool = False,
    norm_bound: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """PolySketch attention of already-normalised q, k (see docs/polysketch.md).

    Parameters
    ----------
    q : [B, Hq, N, D]; k : [B, Hkv, M, D]; v : [B, Hkv, M, Dv] (GQA; causal
        aligned bottom-right).
    features : the degree-p/2 feature map φ (on q's device).
    norm_bound : a bound on every row norm of q and k where one is known (layer-normalised
        rows: sqrt(D)); where it shows them in range (:func:`.polynomial.in_range`) the
        norms of :func:`.polynomial.bounded_inputs` are not computed.

    Returns
    -------
    out [B, Hq, N, Dv] and lse [B, Hq, N] (or None) in float32 (float64 for
    float64 inputs); differentiable (Triton custom backward on CUDA).
    """
    acc = accumulation_dtype(q.dtype)
    B, Hq, N, D = q.shape
    Hkv = k.shape[1]
    # Blocks of b >= M keys all hold one block: clamp b (block_size=10**12 was allocated),
    # to a power of two >= 64 so a multiple of 64 stays one.
    block_size = min(block_size, max(64, 1 << (k.shape[2] - 1).bit_length()))
    G, M, r = Hq // Hkv, k.shape[2], features.dim
    quadratic = use_quadratic(N, M, r, D, v.shape[-1])
    # The scan's and the linear form's products, the features included, in bfloat16 for
    # bfloat16 on CPU; states and sums in acc (naive.py).
    low = acc if quadratic else product_dtype(v.dtype, v.device)
    root = math.sqrt(scale)
    if not features.homogeneous:  # learned sketches: q' = sqrt(scale) q as they were trained
        qs, ks, shrink = q.to(acc) * root, k.to(acc) * root, None
    elif norm_bound is not None and in_range(v, keys=M, norm_bound=norm_bound, scale=scale,
                                             degree=degree, dtype=acc):
        qs, ks, shrink = q.to(low) * root, k.to(low) * root, None  # bounded_inputs' factors: 1
    else:  # rescaled into range, exactly (scale=1e10 gave NaN)
        qs, ks, shrink = bounded_inputs(q.to(acc), k.to(acc), v, scale=scale, degree=degree)
    fq, fk = features(qs.to(low)), features(ks.to(low))
    if is_causal and fused_supported(qs, ks, v, fq, block_size=block_size,
                                     exact_local=exact_local):
        from .fused import polysketch_causal

        # The kernels multiply in v's dtype (float32: TF32), with float32 states.
        kdt = v.dtype if v.dtype in HALF else acc
        out, den = polysketch_causal(qs.to(kdt), ks.to(kdt), v.to(kdt), fq, fk, degree=degree,
                                     block_size=block_size)
        if shrink is None:
            return out, (torch.log(1.0 + den) if need_lse else None)
        # The kernels return num / (1 + den): restore num, then normalise with the shrink.
        return normalize_output(out * (1.0 + den).unsqueeze(-1), den, need_lse, shrink)
    qg, fqg = qs.reshape(B, Hkv, G, N, D).to(low), fq.reshape(B, Hkv, G, N, -1)
    ks, v = ks.to(low), v.to(low)
    if quadratic:
        num, den = _quadratic_torch(qg, ks, v, fqg, fk, degree=degree, block_size=block_size,
                                    exact_local=exact_local, is_causal=is_causal)
    elif is_causal:
        num, den = _causal_torch(qg, ks, v, fqg, fk, degree=degree, block_size=block_size,
                                 exact_local=exact_local)
    else:
        num, den = _noncausal_torch(fqg, fk, v)
    # num may be in the product dtype: the division below promotes it to acc.
    num, den = num.reshape(B, Hq, N, -1), den.reshape(B, Hq, N).to(acc)
    return normalize_output(num, den, need_lse, shrink)


def polysketch_forward(q, k, v, *, is_causal, scale, config, generator, need_lse):
    """Registry entry of ``method="polysketch"`` (see :class:`PolySketchConfig`)."""
    if config.sketch in LEARNED:
        raise ValueError(
            f"sketch={config.sketch!r} has trainable parameters: use "
            "kernelsketch.attn.polysketch.PolySketchAttention, not the functional form"
        )
    if (is_causal and q.device.type == "cpu" and q.dtype == torch.bfloat16
            and q.shape[2] < CPU_CAUSAL_BREAK_EVEN_BF16):
        warn_no_speedup("polysketch", f"causal in bfloat16 on CPU below "
                        f"{CPU_CAUSAL_BREAK_EVEN_BF16} queries")
    features = PolySketchFeatures(q.shape[-1], config, generator=generator).to(q.device)
    if config.normalize:
        q, k = layer_norm_qk(q, k)
    # Layer-normalised rows have norm <= sqrt(D) (1% for the rounding of half inputs).
    bound = 1.01 * math.sqrt(q.shape[-1]) if config.normalize else None
    return sketched_polynomial_attention(
        q, k, v, features, degree=config.degree, block_size=config.block_size,
        exact_local=config.exact_local, scale=scale, is_causal=is_causal, need_lse=need_lse,
        norm_bound=bound,
    )


METHOD = MethodSpec(
    name="polysketch",
    forward=polysketch_forward,
    config_cls=PolySketchConfig,
    summary="PolySketch: sketched degree-p polynomial attention, block causal, linear time",
    paper="arXiv 2310.01655",
    reference="polynomial",
)
