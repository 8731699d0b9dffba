"""``method="hyper"``: dispatch between exact, the fused kernels and the torch path."""

from __future__ import annotations

from ..common.budget import BudgetChoice, predict_sample_size
from ..common.exact import flash_applies
from ..common.sortlsh import fused_kernels_apply
from ..common.sortlsh.estimate import sortlsh_forward
from ..common.spec import MethodSpec
from ..common.triton_utils import HALF
from .config import HyperConfig
from .naive import hyper_noncausal, sampling_probabilities

# Causal calls on CPU with fewer queries than this were not measured faster than SDPA with
# the default config (2049-3071 unmeasured; BENCHMARKS.md, "CPU speed against SDPA",
# session 5, idle machine,
# float32: 1.86-1.99x at 3072, 2.19-2.37x at 4096, 3.32-3.34x at 8192; at 2048 every
# block is exact and the call falls back to exact attention): they warn (NoSpeedupWarning).
CPU_CAUSAL_BREAK_EVEN = 3072
# bfloat16 inputs (session 5, idle, SDPA in bfloat16: 0.69-0.87x at 4096, 1.07-1.18x at 8192,
# 1.63-1.67x at 16384, 2.81-2.84x at 32768; float16 inputs take the same threshold).
CPU_CAUSAL_BREAK_EVEN_HALF = 8192


def use_fused(q, v, config: HyperConfig) -> bool:
    """One fused kernel call per estimate (:mod:`.fused`) with one hash round: the Triton
    kernels on CUDA (half precision, or float32 where torch allows TF32; head dims of q
    and v within the kernels' limit), SDPA's flash kernel on CPU float32/bf16/fp16."""
    return config.hash_rounds == 1 and (fused_kernels_apply(q, v) or flash_applies(q))


def hyper_forward(q, k, v, *, is_causal, scale, config, generator, need_lse):
    """Registry entry of HyperAttention (see :class:`HyperConfig`).

    Exact below ``config.min_seq_len``; otherwise the non-causal approximation
    directly, or inside the causal recursion (common/causal.py, §4 of the paper).
    """
    if use_fused(q, v, config):
        from . import fused

        estimator = fused.hyper_noncausal_fused
    else:
        estimator = hyper_noncausal
    return sortlsh_forward(
        q, k, v, is_causal=is_causal, scale=scale, config=config, generator=generator,
        need_lse=need_lse, estimator=estimator, method="hyper",
        cpu_causal_break_even=(CPU_CAUSAL_BREAK_EVEN_HALF if q.dtype in HALF
                               else CPU_CAUSAL_BREAK_EVEN),
    )


def hyper_auto(q, k, v, *, is_causal, scale, error, config, generator, rows=256) -> BudgetChoice:
    """The smallest ``sample_size`` whose predicted normalised spectral error is <= ``error``
    (:mod:`..common.budget`, on ``rows`` sampled query rows per head); the other fields
    are those of ``config`` as scheduled for this call (``samples_per_key`` set to 0)."""
    config = config.scheduled(is_causal=is_causal, num_keys=k.shape[2]).replace(
        samples_per_key=0.0)
    s, est = predict_sample_size(
        q, k, v, scale=scale, is_causal=is_causal, config=config, target=error, rows=rows,
        generator=generator,
        probabilities=lambda ql, kr, vr, bq, bk, ke: sampling_probabilities(vr, config))
    chosen = config.replace(sample_size=s, **config.unscheduled())
    return BudgetChoice(chosen, est, error, rows)


METHOD = MethodSpec(
    name="hyper",
    forward=hyper_forward,
    config_cls=HyperConfig,
    summary="sortLSH block-diagonal + sampled residual, LSE merge, causal recursion",
    paper="HyperAttention, arXiv 2310.05869",
    auto=hyper_auto,
)
