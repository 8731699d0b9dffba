"""Exact polynomial attention of even degree p (``method="polynomial"``), quadratic time.

PolySketchFormer (arXiv 2310.01655, §2) replaces softmax by

    out_i = Σ_j w_ij v_j / (1 + Σ_j w_ij),   w_ij = (scale · q_i·k_j)^p,

with q and k layer-normalised (no affine parameters in the functional form)
so that the scores are bounded: |scale · q·k| <= scale · D. Since p is even,
w_ij >= 0 and the denominator is >= 1. This module is the exact reference of
the sketched method (:mod:`kernelsketch.attn.polysketch.method`) and holds the
pieces both share.

Log-normaliser (``return_lse``)
-------------------------------
The returned ``lse_i = log(1 + Σ_j w_ij)``. The ``1`` acts as an always-visible
*sink key* with zero value, so ``(out, lse)`` is a partial attention (in the
sense of :mod:`kernelsketch.attn.common.merge`) over ``keys ∪ {sink}``: merging it
with ``merge_partials`` and a partial over further, disjoint keys computed
WITHOUT the sink (``lse = log Σ w``, ``out = Σ w v / Σ w``) is exact. Rows that
see no key (causal with N > M) give ``out = 0`` and ``lse = 0`` (only the sink),
not ``-inf`` as for softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..._checks import check_int
from ..common.gqa import fold_groups, query_positions, unfold_groups
from ..common.merge import accumulation_dtype
from ..common.spec import MethodConfig, MethodSpec

# Largest degree: the PolySketch tree of degree p/2 costs p/2 sketches per token, and in
# float32 (weight ratios within e^±88) degree 64 already resolves |q·k| only within a
# factor e^±1.4 of a row's largest score: a hard maximum.
MAX_DEGREE = 64


def check_degree(degree) -> int:
    """Validate a polynomial attention degree: an even int in [2, MAX_DEGREE]."""
    check_int("degree", degree, min=2, max=MAX_DEGREE)
    if degree % 2:
        raise ValueError(f"degree must be even (weights (q·k)^p must be >= 0), got {degree}")
    return degree


@dataclass(frozen=True)
class PolynomialConfig(MethodConfig):
    """Exact degree-p polynomial attention.

    degree : even int in [2, 64], default 4 (the paper's choice: p = 4 trains
        as well as softmax).
    normalize : layer-normalise q and k over the head dimension (no affine
        parameters) before the scores, as in the paper; default True.
    chunk_size : queries and keys are processed in chunks of this many rows,
        memory O(chunk_size²) per head for the scores.
    """

    degree: int = 4
    normalize: bool = True
    chunk_size: int = 1024

    def __post_init__(self) -> None:
        check_degree(self.degree)
        if not isinstance(self.normalize, bool):
            raise TypeError(f"normalize must be a bool, got {type(self.normalize).__name__}")
        check_int("chunk_size", self.chunk_size, min=1)


def layer_norm_qk(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer norm of q and k over the head dimension (zero mean, unit variance, no affine).

    Rows with an entry beyond 2^50 are first divided by their largest |entry|,
    without the norm's eps (1e-5, negligible next to their variance): their
    variance no longer overflows (q of 1e20 gave NaN).
    """
    def norm(x):
        shape = x.shape[-1:]
        if x.numel():  # one pass for the common case: no entry beyond 2^50
            lo, hi = torch.aminmax(x.detach())
            if max(-float(lo), float(hi)) <= 2.0**50:
                return F.layer_norm(x, shape)
        a = x.abs().amax(-1, keepdim=True)
        big = a > 2.0**50
        if not bool(big.any()):
            return F.layer_norm(x, shape)
        large = F.layer_norm(torch.where(big, x / torch.where(big, a, 1.0), 0.0), shape, eps=1e-30)
        return torch.where(big, large, F.layer_norm(torch.where(big, 0.0, x), shape))

    return norm(q), norm(k)


def polynomial_weights(
    q: torch.Tensor, k: torch.Tensor | None, *, degree: int, scale: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unnormalised weights ``(scale · q kᵀ)^degree`` [..., n, m], zero where ``mask`` is False.

    With ``k=None``, ``q`` holds the scores ``q kᵀ`` [..., n, m] already.
    """
    s = q if k is None else torch.matmul(q, k.transpose(-1, -2))
    if scale != 1.0:
        s = s * scale
    w = s * s  # degree is even: square, then integer power (faster than pow on CPU)
    if degree > 2:
        w = w ** (degree // 2)
    if mask is not None:
        w = w.masked_fill(~mask, 0.0)
    return w


def _log_norm(x: torch.Tensor) -> torch.Tensor:
    """log ‖x‖ over the last axis without overflow or underflow (-inf for zero rows).

    One pass where every row's norm is finite and at least sqrt(d · tiny): the largest
    square is then normal, and the subnormal ones (each off by at most tiny · eps) move
    the sum by at most eps relative. Smaller rows (squares of 3e-22 are subnormal in
    float32: their norm was 0.2% off) are divided by their largest entry first.
    """
    n = torch.linalg.vector_norm(x, dim=-1)
    low = math.sqrt(x.shape[-1] * torch.finfo(x.dtype).tiny)
    if bool(((n >= low) & (n < math.inf)).all()):  # no row overflowed or underflowed
        return n.log()
    a = x.abs().amax(-1)
    a_safe = torch.where(a > 0, a, torch.ones_like(a))
    return a.log() + (x / a_safe.unsqueeze(-1)).norm(dim=-1).log()


def _log_room(dtype: torch.dtype, keys: int, log_v, degree: int):
    """log T of :func:`bounded_inputs`: ``keys · T^p · max(1, max|v|) = e^-8 · (largest
    float)``, with ``log_v = log max(1, max|v|)`` (a float or a tensor)."""
    return (math.log(torch.finfo(dtype).max) - 8.0 - math.log(keys) - log_v) / degree


def in_range(v: torch.Tensor, *, keys: int, norm_bound: float, scale: float, degree: int,
             dtype: torch.dtype) -> bool:
    """Whether q, k whose rows all have norm <= ``norm_bound`` need no rescaling by
    :func:`bounded_inputs` (its factors would all be 1): ``scale · norm_bound² <= T``,
    from one min/max pass over v instead of the norms of q and k. Layer-normalised rows
    (no affine parameters) have norm <= sqrt(D)."""
    lo, hi = torch.aminmax(v.detach())
    log_v = math.log(max(1.0, -float(lo), float(hi)))  # v is finite: checked at the entry
    return math.log(scale) + 2.0 * math.log(norm_bound) <= _log_room(dtype, keys, log_v, degree)


def bounded_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, degree: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q', k', shrink)`` with ``(q'_i·k'_j)^p = e^{-shrink_i} (scale·q_i·k_j)^p``, in range.

    The weights are homogeneous of degree p in q and in k, and so are the
    random sketches' ``(φ(q)·φ(k))²``: dividing q_i and k by constants and
    restoring ``e^{shrink_i}`` in :func:`normalize_output` is exact. The
    factors keep ``|q'_i·k'_j| <= ‖q'_i‖ max_j ‖k'_j‖ <= T`` and ``‖k'_j‖ <=
    sqrt(T)`` with ``M T^p max(1, max|v|) = e^-8 · (largest float)``, so no
    weight, feature state, sum or numerator overflows (``scale=1e10`` gave
    NaN). Where the bound holds already they are 1: ``q' = sqrt(scale) q``,
    ``k' = sqrt(scale) k``, shrink = 0, and the computation is unchanged.

    q [B, Hq, N, D], k [B, Hkv, M, D] in the accumulation dtype; v [B, Hkv, M, Dv].
    Returns q', k' (same shapes) and shrink [B, Hq, N] >= 0 (constants, no gradient).
    """
    Hq, Hkv, M = q.shape[1], k.shape[1], k.shape[2]
    log_root = 0.5 * math.log(scale)
    with torch.no_grad():
        log_q = _log_norm(q) + log_root  # [B, Hq, N]
        log_k = _log_norm(k).amax(-1) + log_root  # [B, Hkv]
        log_v = v.abs().amax(dim=(-2, -1)).to(q.dtype).clamp_min(1.0).log()
        log_t = _log_room(q.dtype, M, log_v, degree)
        ck = (0.5 * log_t - log_k).clamp(max=0.0)  # log of the keys' factor, [B, Hkv]
        room = (log_t - log_k - ck).repeat_interleave(Hq // Hkv, dim=1)  # [B, Hq]
        cq = (room.unsqueeze(-1) - log_q).clamp(max=0.0)  # log of each query's factor
        shrink = -degree * (cq + ck.repeat_interleave(Hq // Hkv, dim=1).unsqueeze(-1))
        root = math.exp(log_root)
        fq, fk = root * cq.exp().unsqueeze(-1), root * ck.exp()[..., None, None]
    return q * fq, k * fk, shrink


def normalize_output(
    num: torch.Tensor, den: torch.Tensor, need_lse: bool, shrink: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``out = num / (1 + den)`` and ``lse = log(1 + den)`` (see the module docstring).

    num [..., n, Dv], den [..., n] (sums of non-negative weights). With
    ``shrink`` [..., n] (:func:`bounded_inputs`, :func:`polynomial_partial`)
    the true sums are ``e^shrink`` times num and den: ``out = num / (e^-shrink
    + den)`` (0 where e^-shrink overflows: every weight is then negligible
    against the 1) and ``lse = log(1 + e^shrink den)``, computed without
    overflow; both equal the above at shrink = 0.
    """
    if shrink is None:
        total = 1.0 + den
        out = num / total.unsqueeze(-1)
        return out, (torch.log(total) if need_lse else None)
    total = torch.exp(-shrink) + den
    # 0 only when e^-shrink underflows and every weight did too: the row keeps out = 0.
    out = num / torch.where(total > 0, total, torch.ones_like(total)).unsqueeze(-1)
    if not need_lse:
        return out, None
    some = den > 0
    log_den = torch.where(some, torch.log(torch.where(some, den, torch.ones_like(den))), -math.inf)
    return out, shrink + torch.logaddexp(-shrink, log_den)


def polynomial_partial(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    degree: int,
    scale: float,
    is_causal: bool,
    chunk_size: int,
    rescale: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Numerator and denominator of polynomial attention, chunked, SDPA layout.

    q [B, Hq, N, D], k [B, Hkv, M, D], v [B, Hkv, M, Dv] (GQA, causal aligned
    bottom-right). Returns ``num`` [B, Hq, N, Dv], ``den`` [B, Hq, N] and
    ``shrink`` [B, Hq, N] in the accumulation dtype, with ``Σ_j w_ij v_j =
    e^shrink num`` and ``Σ_j w_ij = e^shrink den`` (for
    :func:`normalize_output`); differentiable. Without ``rescale`` shrink = 0.
    With it each row is divided by its largest weight ``m_i^p``, ``m_i =
    max_j |scale q_i·k_j|`` over its keys, kept online over the key chunks
    (as FlashAttention keeps the softmax maximum), and shrink = p log m: no
    weight overflows or underflows whole at any scale or degree (m is a
    constant for autograd: the weights are homogeneous). It costs about 40%
    more time, so :func:`polynomial_forward` asks for it only where
    :func:`bounded_inputs` finds that the weights could overflow.
    """
    acc = accumulation_dtype(q.dtype)
    Hq, Hkv, N, M = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    qf = fold_groups(q, Hkv).to(acc)
    k, v = k.to(acc), v.to(acc)
    pos = query_positions(N, M, Hq // Hkv, q.device)
    nums, dens, maxes = [], [], []
    for r0 in range(0, qf.shape[2], chunk_size):
        r1 = min(qf.shape[2], r0 + chunk_size)
        qc, pos_c = qf[:, :, r0:r1], pos[r0:r1]
        num = qc.new_zeros(*qc.shape[:-1], v.shape[-1])
        den = qc.new_zeros(qc.shape[:-1])
        m = qc.new_zeros(qc.shape[:-1])
        last_key = int(pos_c.max()) + 1 if is_causal else M
        for c0 in range(0, min(M, last_key), chunk_size):
            c1 = min(M, c0 + chunk_size)
            s = torch.matmul(qc, k[:, :, c0:c1].transpose(-1, -2))
            mask = None
            if is_causal and int(pos_c.min()) < c1 - 1:
                mask = torch.arange(c0, c1, device=q.device) <= pos_c.unsqueeze(1)
            if not rescale:
                w = polynomial_weights(s, None, degree=degree, scale=scale, mask=mask)
                num = num + torch.matmul(w, v[:, :, c0:c1])
                den = den + w.sum(-1)
                continue
            a = s.abs() * scale if mask is None else (s.abs() * scale).masked_fill(~mask, 0.0)
            m_new = torch.maximum(m, a.detach().amax(-1))
            m_safe = torch.where(m_new > 0, m_new, torch.ones_like(m_new))
            w = polynomial_weights(a / m_safe.unsqueeze(-1), None, degree=degree)
            old = (m / m_safe) ** degree  # rescales the sums of the earlier chunks
            num = num * old.unsqueeze(-1) + torch.matmul(w, v[:, :, c0:c1])
            den = den * old + w.sum(-1)
            m = m_new
        nums.append(num)
        dens.append(den)
        maxes.append(torch.where(m > 0, m.log() * degree, torch.zeros_like(m)))
    return tuple(unfold_groups(torch.cat(parts, 2), Hq) for parts in (nums, dens, maxes))


def polynomial_forward(q, k, v, *, is_causal, scale, config, generator, need_lse):
    """Registry entry of ``method="polynomial"`` (see :class:`PolynomialConfig`)."""
    del generator
    if config.normalize:
        q, k = layer_norm_qk(q, k)
    acc = accumulation_dtype(q.dtype)
    qs, ks, bound = bounded_inputs(q.to(acc), k.to(acc), v, scale=scale, degree=config.degree)
    kwargs = {"degree": config.degree, "is_causal": is_causal, "chunk_size": config.chunk_size}
    if not bool((bound > 0).any()):  # no weight can overflow: the sums as they are
        num, den, _ = polynomial_partial(q, k, v, scale=scale, **kwargs)
        return normalize_output(num, den, need_lse)
    # q', k' shrunk by e^-bound into range, then each row divided by its largest weight
    num, den, shrink = polynomial_partial(qs, ks, v, scale=1.0, rescale=True, **kwargs)
    return normalize_output(num, den, need_lse, shrink + bound)


METHOD = MethodSpec(
    name="polynomial",
    forward=polynomial_forward,
    config_cls=PolynomialConfig,
    summary="exact degree-p polynomial attention (q, k layer-normalised), quadratic",
    paper="arXiv 2310.01655",
    reference=None,
)
