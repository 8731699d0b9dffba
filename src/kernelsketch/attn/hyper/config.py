"""Configuration of HyperAttention (``method="hyper"``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..._checks import check_choice, check_float, check_int
from ..common.sortlsh.config import SortLSHConfig


@dataclass(frozen=True)
class HyperConfig(SortLSHConfig):
    """Configuration of HyperAttention.

    Defaults (chosen from measurements, BENCHMARKS.md): the paper's LSH blocks
    and uniform samples (7 bits, 256 + 256), exact causal blocks of up to 1024
    keys, the always-exact sink (8) and window (128) that keep a pretrained LM's
    quality (SmolLM2-135M, 4 windows of 8192 tokens, one thread: perplexity +3.6% /
    +5.0% with the last 15 / all 30 layers, in 0.82x / 0.62x the exact model's CPU
    time; lm_eval_cpu_8k_bf16leaves_s5.json), the budget schedule above 8192 keys and
    bfloat16 products where the CPU multiplies them natively; a verbatim copy
    from thousands of tokens back is still partly lost (docs/hyper.md).
    ``HyperConfig.paper()`` is the paper's estimator.

    hash_rounds : independent LSH rounds whose blocks are united.
    sampling : "uniform" (the paper) or "value_norm" (p_j ∝ ‖v_j‖, mixed
        half-and-half with uniform so every key keeps probability ≥ 1/(2m)).
    samples_per_key : extra samples proportional to the key count: the sample
        size is ``sample_size + ceil(samples_per_key * m)``.

    The other fields (LSH, blocks, samples, exact sink and window, budget schedule,
    sketch dtype) are :class:`~kernelsketch.attn.common.sortlsh.config.SortLSHConfig`'s.
    """

    hash_rounds: int = 1
    sampling: str = "uniform"
    samples_per_key: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("hash_rounds", self.hash_rounds, min=1, max=16)
        check_choice("sampling", self.sampling, ("uniform", "value_norm"))
        check_float("samples_per_key", self.samples_per_key, min=0.0, max=1.0)

    def num_samples(self, num_keys: int) -> int:
        """Sample size used for ``num_keys`` keys."""
        return self.sample_size + math.ceil(self.samples_per_key * num_keys)

    @classmethod
    def paper(cls) -> HyperConfig:
        """The paper's estimator (and its code's defaults): no exact sink or window, exact
        attention up to 4096 tokens."""
        return cls(min_seq_len=4096, sink=0, window=0, **cls.unscheduled())

    @classmethod
    def full_budget(cls, seq_len: int) -> HyperConfig:
        """A config whose blocks cover every pair at this length (equals exact attention, in
        the input dtype)."""
        return cls(block_size=max(seq_len, 1), sample_size=0, min_seq_len=0, sink=0, window=0,
                   sketch_dtype="input", **cls.unscheduled())
