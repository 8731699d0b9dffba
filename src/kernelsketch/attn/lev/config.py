"""Configuration of LevAttention (``method="lev"``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..._checks import check_choice, check_float, check_int
from ..common.spec import MethodConfig

# Largest exponent: the symmetric tensor power K^(⊗p/2) (or its PolySketch tree) grows with p,
# and |x|^p attention at p = 64 already is a hard maximum (as polysketch's MAX_DEGREE).
MAX_P = 64
# Largest exact eigendecomposition (F x F Gram or M x M kernel) computed without a sketch,
# and the largest sketch size (its Gram is sketch_size x sketch_size): one 4096 x 4096 eigh
# per head is already seconds on a CPU.
EXACT_SIZE_LIMIT = 4096


def check_p(p) -> int:
    """``p`` checked to be an even int in [2, MAX_P]."""
    check_int("p", p, min=2, max=MAX_P)
    if p % 2:
        raise ValueError(f"p must be an even int >= 2 (leverage scores of K^(⊗p/2)), got {p}")
    return p


@dataclass(frozen=True)
class LevConfig(MethodConfig):
    """Configuration of LevAttention.

    p : even int in [2, 64]; the scores are leverage scores of ``K^{⊗p/2}``
        (the universal set of ``|x|^p`` attention).
    eps : threshold in (0, 1]; when given, every key with score >= eps is
        kept (set size <= rank/eps <= d^{p/2}/eps per head) and ``budget`` is
        ignored.
    budget : keys kept per key/value head when ``eps`` is None (the keys of
        largest score); the paper uses 32. At or above the key count every
        key is kept (softmax: the exact method runs).
    window : each query also attends to the ``window`` keys ending at its
        own position (0: none).
    sink : the first ``sink`` keys join the selected set of every head
        (attention sinks; 0: none). In a pretrained LM the set alone loses
        the model (BENCHMARKS.md): :meth:`pretrained` adds sinks and a window.
    kind : "softmax" (softmax restricted to the set; the paper's practical
        LevAttention) or "power" (``|q·k|^p`` normalised over the set).
    ridge : relative ridge ``λ = ridge · tr(G) / F`` added to the Gram
        (0: plain, rank-aware leverage scores).
    sketch_size : int in [1, 4096]; for p >= 4, PolySketch features of this size instead of the
        exact symmetric tensor power (None: exact scores, through the
        ``C(d+p/2-1, p/2)`` features or the M x M kernel, whichever is
        smaller; a ValueError asks for sketch_size when both exceed
        ``EXACT_SIZE_LIMIT``).
    """

    p: int = 2
    eps: float | None = None
    budget: int = 32
    window: int = 0
    sink: int = 0
    kind: str = "softmax"
    ridge: float = 0.0
    sketch_size: int | None = None

    def __post_init__(self) -> None:
        check_p(self.p)
        if self.eps is not None:
            check_float("eps", self.eps, min=0.0, max=1.0, min_exclusive=True)
        check_int("budget", self.budget, min=1)
        check_int("window", self.window, min=0)
        check_int("sink", self.sink, min=0)
        check_choice("kind", self.kind, ("softmax", "power"))
        check_float("ridge", self.ridge, min=0.0)
        if self.sketch_size is not None:
            check_int("sketch_size", self.sketch_size, min=1, max=EXACT_SIZE_LIMIT)

    @classmethod
    def pretrained(cls, budget: int = 64, window: int = 256, sink: int = 4) -> LevConfig:
        """The mode for a pretrained LM: the universal set plus attention sinks and a local
        window (the paper's set alone drops most of an LM's attention mass)."""
        return cls(budget=budget, window=window, sink=sink)

    @classmethod
    def full_budget(cls, seq_len: int) -> LevConfig:
        """A config that keeps every key at this length (equals exact softmax attention)."""
        return cls(budget=max(check_int("seq_len", seq_len, min=0), 1))
