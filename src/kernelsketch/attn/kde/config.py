"""Configuration of KDEformer (``method="kde"``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..._checks import check_int
from ..common.sortlsh.config import SortLSHConfig


@dataclass(frozen=True)
class KDEConfig(SortLSHConfig):
    """Configuration of KDEformer.

    Defaults (chosen from measurements, BENCHMARKS.md): LSH blocks and AMM
    samples of 256 keys, exact causal blocks of up to 1024 keys, the always-exact
    sink (8) and window (128) that keep a pretrained LM's quality (SmolLM2-135M, 4
    windows of 8192 tokens, one thread: perplexity +3.3% / +4.0% with the last 15 /
    all 30 layers, in 0.87x / 0.72x the exact model's CPU time;
    lm_eval_cpu_8k_bf16leaves_s5.json), the budget schedule above 8192 keys and
    bfloat16 products where the CPU multiplies them natively; a verbatim copy from
    thousands of tokens back is still partly lost (docs/hyper.md).

    kde_samples : uniform samples used by the two density estimates (keys for
        D̂, query rows for the column norms).
    long_kde_samples : ``kde_samples`` of the budget schedule (causal problems over
        ``long_seq_len`` keys; None: ``kde_samples`` at every length). 128 halves the
        density estimates' [rows, keys] products with the same spectral error at 32k
        (BENCHMARKS.md).

    The other fields (LSH, blocks, the AMM sample size, exact sink and window, budget
    schedule, sketch dtype) are
    :class:`~kernelsketch.attn.common.sortlsh.config.SortLSHConfig`'s.
    """

    kde_samples: int = 256
    long_kde_samples: int | None = 128

    SCHEDULED: ClassVar[tuple[str, ...]] = (*SortLSHConfig.SCHEDULED, "kde_samples")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("kde_samples", self.kde_samples, min=1)
        if self.long_kde_samples is not None:
            check_int("long_kde_samples", self.long_kde_samples, min=1)

    @classmethod
    def full_budget(cls, seq_len: int) -> KDEConfig:
        """A config whose blocks cover every pair at this length (equals exact attention, in
        the input dtype)."""
        return cls(block_size=max(seq_len, 1), sample_size=0, min_seq_len=0, sink=0, window=0,
                   sketch_dtype="input", **cls.unscheduled())
