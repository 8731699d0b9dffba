"""``method="hyper"``: dispatch between exact, the fused kernels and the torch path."""

from __future__ import annotations

from ..common.causal import approximate_or_exact
from ..common.exact import flash_applies
from ..common.sortlsh import fused_kernels_apply
from ..common.spec import MethodSpec
from .config import HyperConfig
from .naive import hyper_noncausal


def use_fused(q, config: HyperConfig) -> bool:
    """One fused kernel call per estimate (:mod:`.fused`) with one hash round: the Triton
    kernels on CUDA half-precision inputs, SDPA's flash kernel on CPU float32/bf16/fp16."""
    return config.hash_rounds == 1 and (fused_kernels_apply(q) or flash_applies(q))


def hyper_forward(q, k, v, *, is_causal, scale, config, generator, need_lse):
    """Registry entry of HyperAttention (see :class:`HyperConfig`).

    Exact below ``config.min_seq_len``; otherwise the non-causal approximation
    directly, or inside the causal recursion (common/causal.py, §4 of the paper).
    """
    if use_fused(q, config):
        from . import fused

        noncausal = fused.hyper_noncausal_fused
    else:
        noncausal = hyper_noncausal
    return approximate_or_exact(
        q, k, v, is_causal=is_causal, scale=scale, min_seq_len=config.min_seq_len,
        noncausal=lambda qb, kb, vb, s, first, last: noncausal(qb, kb, vb, s, config, generator,
                                                                first, last),
        need_lse=need_lse, sink=config.sink, window=config.window, method="hyper",
    )


METHOD = MethodSpec(
    name="hyper",
    forward=hyper_forward,
    config_cls=HyperConfig,
    summary="sortLSH block-diagonal + sampled residual, LSE merge, causal recursion",
    paper="HyperAttention, arXiv 2310.05869",
)
