"""Configuration of KDEformer (``method="kde"``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..._checks import check_int
from ..common.spec import MethodConfig


@dataclass(frozen=True)
class KDEConfig(MethodConfig):
    """Configuration of KDEformer.

    Defaults (chosen from measurements, BENCHMARKS.md): LSH blocks and AMM
    samples of 256 keys, the causal recursion's leaves of 1024 tokens, and the
    always-exact sink (8) and window (128) that keep a pretrained LM's quality
    (SmolLM2-135M, 4 windows of 8192 tokens, one thread: perplexity +3.4% / +3.9%
    with the last 15 / all 30 layers, in 0.83x / 0.75x the exact model's CPU time,
    centred hashing; lm_eval_cpu_8k_centred_s4.json); a verbatim copy from thousands
    of tokens back is still partly lost (docs/hyper.md).

    lsh_bits : bits of the angular LSH, 1..30.
    block_size : keys per sorted block (the exact, LSH-colliding part).
    sample_size : keys sampled with the AMM distribution (all keys, weight 1,
        once it reaches the key count; 0 keeps only the blocks).
    kde_samples : uniform samples used by the two density estimates (keys for
        D̂, query rows for the column norms).
    min_seq_len : exact attention at or below this length; 0 forces the
        approximation at any length.
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
        SDPA's CPU flash kernel (docs/kde.md, "Budget schedule").
    """

    lsh_bits: int = 7
    block_size: int = 256
    sample_size: int = 256
    kde_samples: int = 256
    min_seq_len: int = 1024
    sink: int = 8
    window: int = 128
    long_seq_len: int = 8192
    long_sample_size: int | None = 120

    def __post_init__(self) -> None:
        check_int("lsh_bits", self.lsh_bits, min=1, max=30)
        check_int("block_size", self.block_size, min=1)
        check_int("sample_size", self.sample_size, min=0)
        check_int("kde_samples", self.kde_samples, min=1)
        check_int("min_seq_len", self.min_seq_len, min=0)
        check_int("sink", self.sink, min=0)
        check_int("window", self.window, min=0)
        check_int("long_seq_len", self.long_seq_len, min=0)
        if self.long_sample_size is not None:
            check_int("long_sample_size", self.long_sample_size, min=0)

    @classmethod
    def full_budget(cls, seq_len: int) -> KDEConfig:
        """A config whose blocks cover every pair at this length (equals exact attention)."""
        return cls(block_size=max(seq_len, 1), sample_size=0, min_seq_len=0, sink=0, window=0,
                   long_sample_size=None)
