"""``method="kde"``: dispatch between exact, the fused kernels and the torch path."""

from __future__ import annotations

from ..common.causal import approximate_or_exact
from ..common.sortlsh import fused_kernels_apply
from ..common.spec import MethodSpec
from .config import KDEConfig
from .naive import kde_noncausal


def use_fused(q, config: KDEConfig) -> bool:
    """The fused kernels run CUDA half-precision inputs."""
    return fused_kernels_apply(q)


def kde_forward(q, k, v, *, is_causal, scale, config, generator, need_lse):
    """Registry entry of KDEformer (see :class:`KDEConfig`).

    Exact below ``config.min_seq_len``; otherwise the non-causal approximation
    directly, or inside the causal recursion (common/causal.py).
    """
    if use_fused(q, config):
        from . import fused

        noncausal = fused.kde_noncausal_fused
    else:
        noncausal = kde_noncausal
    return approximate_or_exact(
        q, k, v, is_causal=is_causal, scale=scale, min_seq_len=config.min_seq_len,
        noncausal=lambda qb, kb, vb, s: noncausal(qb, kb, vb, s, config, generator),
        need_lse=need_lse,
    )


METHOD = MethodSpec(
    name="kde",
    forward=kde_forward,
    config_cls=KDEConfig,
    summary="LSH-colliding blocks exact + AMM importance sampling from KDE estimates",
    paper="KDEformer, arXiv 2302.02451",
)
