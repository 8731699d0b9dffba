"""Shared randomized primitives: projections, tensor sketches, LSH, leverage scores, sampling.

Every sketch is a ``torch.nn.Module`` whose randomness is drawn once in
``__init__`` (from ``seed=`` or ``generator=``, else torch's global generator)
and stored in buffers, maps ``[..., d_in] -> [..., d_out]`` for any float
dtype on any device, and is differentiable in its input. Linear sketches have
unbiased inner products ``E[<S(x), S(y)>] = <x, y>``; tensor sketches of
degree ``q`` have ``E[<S(x), S(y)>] = <x, y>**q``. Randomness follows
docs/conventions.md; theory and references: docs/sketches.md.
"""

from kernelsketch.sketch.leverage import (
    leverage_scores,
    leverage_scores_from_gram,
    leverage_scores_from_kernel,
    ridge_leverage_scores,
    sketched_leverage_scores,
)
from kernelsketch.sketch.lsh import AngularLSH, gray_code, inverse_gray_code
from kernelsketch.sketch.projections import (
    SRHT,
    CountSketch,
    GaussianSketch,
    RademacherSketch,
    SketchModule,
    fwht,
)
from kernelsketch.sketch.sampling import importance_sample, resolve_generator, uniform_sample
from kernelsketch.sketch.tensor import Degree2Sketch, PolySketch, TensorSketch, TensorSRHT

__all__ = [
    "SRHT",
    "AngularLSH",
    "CountSketch",
    "Degree2Sketch",
    "GaussianSketch",
    "PolySketch",
    "RademacherSketch",
    "SketchModule",
    "TensorSRHT",
    "TensorSketch",
    "fwht",
    "gray_code",
    "importance_sample",
    "inverse_gray_code",
    "leverage_scores",
    "leverage_scores_from_gram",
    "leverage_scores_from_kernel",
    "resolve_generator",
    "ridge_leverage_scores",
    "sketched_leverage_scores",
    "uniform_sample",
]
