"""Configuration of PolySketch attention (``method="polysketch"``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..._checks import check_choice, check_int
from ..common.spec import MethodConfig
from .polynomial import check_degree

SKETCHES = ("gaussian", "hadamard", "learned", "learned-mlp")
LEARNED = ("learned", "learned-mlp")
# Largest sketch size r: the state holds r² features per key/value head and value column
# (r = 4096: 2^24 of them, 64 MiB each in float32; the paper uses r = 32 or 64).
MAX_SKETCH_SIZE = 4096


@dataclass(frozen=True)
class PolySketchConfig(MethodConfig):
    """PolySketch attention.

    degree : even int in [2, 64], default 4 (the polynomial degree p).
    sketch_size : r in [1, 4096], the sketch dimension of the degree-p/2 feature
        map; the state has r² features. Default 32 (the paper uses 32 or 64).
    block_size : b, tokens per block of the causal algorithm. Default 256.
    sketch : "gaussian" (default), "hadamard" (TensorSRHT), "learned"
        (:class:`LearnedDegree2Sketch`) or "learned-mlp" (the paper's MLP
        branches, :class:`MLPDegree2Sketch`). The learned sketches need
        degree 4 and :class:`PolySketchAttention`, whose parameters are trained.
    exact_local : causal only: exact polynomial weights inside each block
        (default True, the paper's choice); False sketches them too.
    normalize : layer-normalise q and k (no affine) in the functional form,
        default True as in the paper. :class:`PolySketchAttention` uses its
        own (optionally affine) layer norms instead.
    """

    degree: int = 4
    sketch_size: int = 32
    block_size: int = 256
    sketch: str = "gaussian"
    exact_local: bool = True
    normalize: bool = True

    def __post_init__(self) -> None:
        check_degree(self.degree)
        check_int("sketch_size", self.sketch_size, min=1, max=MAX_SKETCH_SIZE)
        check_int("block_size", self.block_size, min=1)
        check_choice("sketch", self.sketch, SKETCHES)
        for name in ("exact_local", "normalize"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")
        if self.sketch in LEARNED and self.degree != 4:
            raise ValueError(f"sketch={self.sketch!r} needs degree=4, got degree={self.degree}")
