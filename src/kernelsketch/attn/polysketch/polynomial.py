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

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..._checks import check_int
from ..common.gqa import fold_groups, query_positions, unfold_groups
from ..common.merge import accumulation_dtype
from ..common.spec import MethodConfig, MethodSpec


def check_degree(degree) -> int:
    """Validate a polynomial attention degree: an even int >= 2."""
    check_int("degree", degree, min=2)
    if degree % 2:
        raise ValueError(f"degree must be even (weights (q·k)^p must be >= 0), got {degree}")
    return degree


@dataclass(frozen=True)
class PolynomialConfig(MethodConfig):
    """Exact degree-p polynomial attention.

    degree : even int >= 2, default 4 (the paper's choice: p = 4 trains as
        well as softmax).
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
    """Layer norm of q and k over the head dimension (zero mean, unit variance, no affine)."""
    return F.layer_norm(q, q.shape[-1:]), F.layer_norm(k, k.shape[-1:])


def polynomial_weights(
    q: torch.Tensor, k: torch.Tensor, *, degree: int, scale: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unnormalised weights ``(scale · q kᵀ)^degree`` [..., n, m], zero where ``mask`` is False."""
    s = torch.matmul(q, k.transpose(-1, -2))
    if scale != 1.0:
        s = s * scale
    w = s * s  # degree is even: square, then integer power (faster than pow on CPU)
    if degree > 2:
        w = w ** (degree // 2)
    if mask is not None:
        w = w.masked_fill(~mask, 0.0)
    return w


def normalize_output(
    num: torch.Tensor, den: torch.Tensor, need_lse: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``out = num / (1 + den)`` and ``lse = log(1 + den)`` (see the module docstring).

    num [..., n, Dv], den [..., n] (sums of non-negative weights).
    """
    total = 1.0 + den
    out = num / total.unsqueeze(-1)
    return out, (torch.log(total) if need_lse else None)


def polynomial_partial(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    degree: int,
    scale: float,
    is_causal: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator and denominator of polynomial attention, chunked, SDPA layout.

    q [B, Hq, N, D], k [B, Hkv, M, D], v [B, Hkv, M, Dv] (GQA, causal aligned
    bottom-right). Returns ``num = Σ_j w_ij v_j`` [B, Hq, N, Dv] and
    ``den = Σ_j w_ij`` [B, Hq, N] in the accumulation dtype; differentiable.
    """
    acc = accumulation_dtype(q.dtype)
    Hq, Hkv, N, M = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    qf = fold_groups(q, Hkv).to(acc)
    k, v = k.to(acc), v.to(acc)
    pos = query_positions(N, M, Hq // Hkv, q.device)
    nums, dens = [], []
    for r0 in range(0, qf.shape[2], chunk_size):
        r1 = min(qf.shape[2], r0 + chunk_size)
        qc, pos_c = qf[:, :, r0:r1], pos[r0:r1]
        num = qc.new_zeros(*qc.shape[:-1], v.shape[-1])
        den = qc.new_zeros(qc.shape[:-1])
        last_key = int(pos_c.max()) + 1 if is_causal else M
        for c0 in range(0, min(M, last_key), chunk_size):
            c1 = min(M, c0 + chunk_size)
            mask = None
            if is_causal and int(pos_c.min()) < c1 - 1:
                mask = torch.arange(c0, c1, device=q.device) <= pos_c.unsqueeze(1)
            w = polynomial_weights(qc, k[:, :, c0:c1], degree=degree, scale=scale, mask=mask)
            num = num + torch.matmul(w, v[:, :, c0:c1])
            den = den + w.sum(-1)
        nums.append(num)
        dens.append(den)
    return unfold_groups(torch.cat(nums, 2), Hq), unfold_groups(torch.cat(dens, 2), Hq)


def polynomial_forward(q, k, v, *, is_causal, scale, config, generator, need_lse):
    """Registry entry of ``method="polynomial"`` (see :class:`PolynomialConfig`)."""
    del generator
    if config.normalize:
        q, k = layer_norm_qk(q, k)
    num, den = polynomial_partial(
        q, k, v, degree=config.degree, scale=scale, is_causal=is_causal,
        chunk_size=config.chunk_size,
    )
    return normalize_output(num, den, need_lse)


METHOD = MethodSpec(
    name="polynomial",
    forward=polynomial_forward,
    config_cls=PolynomialConfig,
    summary="exact degree-p polynomial attention (q, k layer-normalised), quadratic",
    paper="arXiv 2310.01655",
    reference=None,
)
