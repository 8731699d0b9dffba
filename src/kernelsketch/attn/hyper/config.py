"""Configuration of HyperAttention (``method="hyper"``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..._checks import check_choice, check_float, check_int
from ..common.spec import MethodConfig


@dataclass(frozen=True)
class HyperConfig(MethodConfig):
    """Configuration of HyperAttention.

    Defaults (chosen from measurements, BENCHMARKS.md): the paper's LSH blocks
    and uniform samples (7 bits, 256 + 256), the causal recursion's leaves of
    1024 tokens, and the always-exact sink (8) and window (128) that keep a
    pretrained LM's quality (SmolLM2-135M, 4 windows of 8192 tokens, one thread:
    perplexity +3.6% / +4.9% with the last 15 / all 30 layers, in 0.87x / 0.65x
    the exact model's CPU time, centred hashing; lm_eval_cpu_8k_centred_s4.json); a
    verbatim copy from thousands of tokens back is still partly lost (docs/hyper.md).
    ``HyperConfig.paper()`` is the paper's estimator.

    lsh_bits : bits of the angular LSH (2**lsh_bits buckets), 1..30.
    block_size : keys per block of the sorted block-diagonal part.
    sample_size : keys sampled for the residual (all keys, weight 1, once
        ``sample_size`` reaches the key count; 0 disables sampling).
    min_seq_len : exact attention at or below this length (keys for
        non-causal; the recursion's leaf size for causal).
    hash_rounds : independent LSH rounds whose blocks are united.
    sampling : "uniform" (the paper) or "value_norm" (p_j ∝ ‖v_j‖, mixed
        half-and-half with uniform so every key keeps probability ≥ 1/(2m)).
    samples_per_key : extra samples proportional to the key count: the sample
        size is ``sample_size + ceil(samples_per_key * m)``.
    sink : the first ``sink`` keys are attended exactly by every query
        (attention sinks), outside the blocks and the samples.
    window : causal: every query attends exactly to its ``window`` preceding
        keys (each off-diagonal block of the recursion attends exactly to its
        last ``window`` keys); not used without ``is_causal``.
    long_seq_len, long_sample_size : causal problems with more than
        ``long_seq_len`` keys sample ``long_sample_size`` keys per off-diagonal
        block instead of ``sample_size`` (None: ``sample_size`` at every length).
        The defaults (8192, 120) leave every problem up to 8192 tokens unchanged
        (the perplexity measurement above) and above it give each block's queries
        at most 512 keys with the default block, sink and window: one key tile of
        SDPA's CPU flash kernel (docs/hyper.md, "Budget schedule").
    """

    lsh_bits: int = 7
    block_size: int = 256
    sample_size: int = 256
    min_seq_len: int = 1024
    hash_rounds: int = 1
    sampling: str = "uniform"
    samples_per_key: float = 0.0
    sink: int = 8
    window: int = 128
    long_seq_len: int = 8192
    long_sample_size: int | None = 120

    def __post_init__(self) -> None:
        check_int("lsh_bits", self.lsh_bits, min=1, max=30)
        check_int("block_size", self.block_size, min=1)
        check_int("sample_size", self.sample_size, min=0)
        check_int("min_seq_len", self.min_seq_len, min=0)
        check_int("hash_rounds", self.hash_rounds, min=1, max=16)
        check_choice("sampling", self.sampling, ("uniform", "value_norm"))
        check_float("samples_per_key", self.samples_per_key, min=0.0, max=1.0)
        check_int("sink", self.sink, min=0)
        check_int("window", self.window, min=0)
        check_int("long_seq_len", self.long_seq_len, min=0)
        if self.long_sample_size is not None:
            check_int("long_sample_size", self.long_sample_size, min=0)

    def num_samples(self, num_keys: int) -> int:
        """Sample size used for ``num_keys`` keys."""
        return self.sample_size + math.ceil(self.samples_per_key * num_keys)

    @classmethod
    def paper(cls) -> HyperConfig:
        """The paper's estimator (and its code's defaults): no exact sink or window, exact
        attention up to 4096 tokens."""
        return cls(min_seq_len=4096, sink=0, window=0, long_sample_size=None)

    @classmethod
    def full_budget(cls, seq_len: int) -> HyperConfig:
        """A config whose blocks cover every pair at this length (equals exact attention)."""
        return cls(block_size=max(seq_len, 1), sample_size=0, min_seq_len=0, sink=0, window=0,
                   long_sample_size=None)
