"""Inner-product sketches and join-size / join-correlation estimation.

``Sketcher(method, size, seed).sketch(vector or (indices, values))`` returns a
:class:`Sketch`; ``sketch_a.inner_product(sketch_b)`` estimates ``<a, b>``.
:mod:`kernelsketch.inner.join` estimates join size, sums and post-join
correlation of two keyed columns from one sketch per column. ``seed`` is the
hashing seed shared by coordinated sketches (docs/conventions.md). Theory:
docs/inner_products.md.
"""

from kernelsketch.inner.base import Sketch
from kernelsketch.inner.join import (
    ColumnSketch,
    JoinStatistics,
    estimate_join,
    exact_join_statistics,
    join_correlation,
    join_size,
    join_statistics,
    keyed_vectors,
    sketch_column,
    sketch_keyed_vectors,
)
from kernelsketch.inner.linear import CountSketch, JLSketch
from kernelsketch.inner.minhash import MinHashSketch, WeightedMinHashSketch
from kernelsketch.inner.sampling import PrioritySketch, ThresholdSketch
from kernelsketch.inner.sketcher import METHODS, Sketcher

__all__ = [
    "METHODS",
    "ColumnSketch",
    "CountSketch",
    "JLSketch",
    "JoinStatistics",
    "MinHashSketch",
    "PrioritySketch",
    "Sketch",
    "Sketcher",
    "ThresholdSketch",
    "WeightedMinHashSketch",
    "estimate_join",
    "exact_join_statistics",
    "join_correlation",
    "join_size",
    "join_statistics",
    "keyed_vectors",
    "sketch_column",
    "sketch_keyed_vectors",
]
