"""``method="kde"``: dispatch between exact, the fused kernels and the torch path."""

from __future__ import annotations

from ..common.budget import BudgetChoice, predict_sample_size
from ..common.exact import flash_applies
from ..common.sortlsh import fused_kernels_apply
from ..common.sortlsh.estimate import sortlsh_forward
from ..common.spec import MethodSpec
from ..common.triton_utils import HALF
from .config import KDEConfig
from .naive import amm_probabilities, kde_noncausal

# Causal calls on CPU with fewer queries than this were not measured faster than SDPA with
# the default config (2049-3071 unmeasured; BENCHMARKS.md, "CPU speed against SDPA",
# session 5, idle machine,
# float32: 1.47-1.64x at 3072, 1.91-1.99x at 4096, 2.63x at 8192; at 2048 every
# block is exact and the call falls back to exact attention): they warn (NoSpeedupWarning).
CPU_CAUSAL_BREAK_EVEN = 3072
# bfloat16 inputs (session 5, idle, SDPA in bfloat16: 0.91-0.98x at 8192, 1.33-1.34x at 16384,
# 2.19-2.25x at 32768; float16 inputs take the same threshold).
CPU_CAUSAL_BREAK_EVEN_HALF = 16384


def use_fused(q, v, config: KDEConfig) -> bool:
    """One fused kernel call per estimate (:mod:`.fused`): the Triton kernels on CUDA (half
    precision, or float32 where torch allows TF32; head dims of q and v within the kernels'
    limit), SDPA's flash kernel on CPU float32/bf16/fp16."""
    return fused_kernels_apply(q, v) or flash_applies(q)


def kde_forward(q, k, v, *, is_causal, scale, config, generator, need_lse):
    """Registry entry of KDEformer (see :class:`KDEConfig`).

    Exact below ``config.min_seq_len``; otherwise the non-causal approximation
    directly, or inside the causal recursion (common/causal.py).
    """
    if use_fused(q, v, config):
        from . import fused

        estimator = fused.kde_noncausal_fused
    else:
        estimator = kde_noncausal
    return sortlsh_forward(
        q, k, v, is_causal=is_causal, scale=scale, config=config, generator=generator,
        need_lse=need_lse, estimator=estimator, method="kde",
        cpu_causal_break_even=(CPU_CAUSAL_BREAK_EVEN_HALF if q.dtype in HALF
                               else CPU_CAUSAL_BREAK_EVEN),
    )


def kde_auto(q, k, v, *, is_causal, scale, error, config, generator, rows=256) -> BudgetChoice:
    """The smallest ``sample_size`` whose predicted normalised spectral error is <= ``error``
    under the AMM distribution (:mod:`..common.budget`, on ``rows`` sampled query rows per
    head); the other fields are those of ``config`` as scheduled for this call."""
    config = config.scheduled(is_causal=is_causal, num_keys=k.shape[2])
    def probabilities(q_lvl, k_rest, v_rest, blk_q, blk_k, k_exact):
        return amm_probabilities(q_lvl, k_rest, v_rest, [(blk_q, blk_k)], scale, config,
                                 generator, k_exact)

    s, est = predict_sample_size(q, k, v, scale=scale, is_causal=is_causal, config=config,
                                 target=error, rows=rows, generator=generator,
                                 probabilities=probabilities)
    chosen = config.replace(sample_size=s, **config.unscheduled())
    return BudgetChoice(chosen, est, error, rows)


METHOD = MethodSpec(
    name="kde",
    forward=kde_forward,
    config_cls=KDEConfig,
    summary="LSH-colliding blocks exact + AMM importance sampling from KDE estimates",
    paper="KDEformer, arXiv 2302.02451",
    auto=kde_auto,
)
