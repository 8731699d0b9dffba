"""The fields every sortLSH method (HyperAttention, KDEformer) shares, validated once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...._checks import check_choice, check_int
from ..exact import SKETCH_DTYPES
from ..spec import MethodConfig


@dataclass(frozen=True)
class SortLSHConfig(MethodConfig):
    """Fields shared by :class:`~kernelsketch.attn.hyper.HyperConfig` and
    :class:`~kernelsketch.attn.kde.KDEConfig` (their defaults: docs/hyper.md, docs/kde.md).

    lsh_bits : bits of the angular LSH (2**lsh_bits buckets), 1..30.
    block_size : keys per block of the sorted block-diagonal part.
    sample_size : keys sampled for the residual (all keys, weight 1, once it
        reaches the key count; 0 keeps only the blocks).
    min_seq_len : exact attention at or below this length (keys for non-causal;
        for causal, blocks of the recursion with at most this many keys are exact:
        leaves of up to 2·min_seq_len tokens).
    sink : the first ``sink`` keys are attended exactly by every query
        (attention sinks), outside the blocks and the samples.
    window : causal: every query attends exactly to its ``window`` preceding keys
        (each off-diagonal block of the recursion attends exactly to its last
        ``window`` keys); not used without ``is_causal``.
    long_seq_len, long_sample_size, long_min_seq_len : the budget schedule: causal
        problems with more than ``long_seq_len`` keys sample ``long_sample_size``
        keys per off-diagonal block and compute exactly only blocks of at most
        ``long_min_seq_len`` keys (None: the plain field at every length). The
        defaults (8192, 120, 512) leave every problem up to 8192 tokens unchanged and
        above it give each block's queries at most 512 keys with the default block,
        sink and window (one key tile of SDPA's CPU flash kernel) and leaves of 1024
        tokens (docs/hyper.md, "Budget schedule").
    sketch_dtype : "auto", "input" or "bfloat16": the dtype of a sketched call's products
        on CPU for float32 inputs (the sketched blocks on the fused flash path, i.e. one
        hash round, and the causal recursion's exact leaves; "auto": bfloat16 where the
        CPU multiplies it natively; :func:`~kernelsketch.attn.common.exact.sketch_product_dtype`).
        The context-parallel path (kernelsketch.distributed) multiplies its cross-rank
        blocks in the input dtype; each rank's own causal block runs this method as is.
    """

    lsh_bits: int = 7
    block_size: int = 256
    sample_size: int = 256
    min_seq_len: int = 1024
    sink: int = 8
    window: int = 128
    long_seq_len: int = 8192
    long_sample_size: int | None = 120
    long_min_seq_len: int | None = 512
    sketch_dtype: str = "auto"

    # The fields the budget schedule replaces by their ``long_`` namesakes.
    SCHEDULED: ClassVar[tuple[str, ...]] = ("sample_size", "min_seq_len")

    def __post_init__(self) -> None:
        check_int("lsh_bits", self.lsh_bits, min=1, max=30)
        check_int("block_size", self.block_size, min=1)
        check_int("sample_size", self.sample_size, min=0)
        check_int("min_seq_len", self.min_seq_len, min=0)
        check_int("sink", self.sink, min=0)
        check_int("window", self.window, min=0)
        check_int("long_seq_len", self.long_seq_len, min=0)
        for name in SortLSHConfig.SCHEDULED:
            if getattr(self, "long_" + name) is not None:
                check_int("long_" + name, getattr(self, "long_" + name), min=0)
        check_choice("sketch_dtype", self.sketch_dtype, SKETCH_DTYPES)

    def scheduled(self, *, is_causal: bool, num_keys: int) -> SortLSHConfig:
        """The config a call runs: for a causal problem over more than ``long_seq_len``
        keys, the :attr:`SCHEDULED` fields replaced by their ``long_`` values (where not
        None; the result has every ``long_`` field None, so it is final); else ``self``."""
        if not is_causal or num_keys <= self.long_seq_len:
            return self
        changes = {name: getattr(self, "long_" + name) for name in self.SCHEDULED
                   if getattr(self, "long_" + name) is not None}
        if not changes:
            return self
        return self.replace(**changes, **self.unscheduled())

    @classmethod
    def unscheduled(cls) -> dict:
        """The field values that switch the budget schedule off: ``cls(**cls.unscheduled())``."""
        return {"long_" + name: None for name in cls.SCHEDULED}
