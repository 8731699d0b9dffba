"""Linear inner-product sketches: hashed Johnson-Lindenstrauss and CountSketch.

Both are ``S a`` for a random matrix ``S`` hashed from (seed, key, row), so
sketches built independently share ``S``, ``<S a, S b>`` estimates ``<a, b>`` and
sketches merge by addition (streaming updates). Error (one row): unbiased with
variance at most ``2 ||a||^2 ||b||^2 / m`` (Achlioptas 2003; Charikar, Chen &
Farach-Colton 2002). Theory: docs/inner_products.md.
"""

from __future__ import annotations

import numpy as np

from kernelsketch.inner.base import Sketch
from kernelsketch.sketch.hashing import hash_streams, to_bucket, to_sign

# keys processed per block, so the [m, block] hash matrix stays ~32 MB
_BLOCK_WORDS = 1 << 22


class JLSketch(Sketch):
    """Rademacher JL projection ``y = S a``, ``S[j, i] = ±1/sqrt(m)`` from hashes.

    Storage: ``m = size`` words. Estimator ``<y_a, y_b>`` is unbiased.
    """

    method = "jl"
    _array_names = ("projection",)

    @property
    def projection(self) -> np.ndarray:
        """The projected vector ``S a``, float64, shape [m]."""
        return self._arrays["projection"]

    @property
    def storage_size(self) -> int:
        return int(self.projection.size)

    def _inner(self, other: Sketch) -> float:
        return float(self.projection @ other.projection)

    def _merge(self, other: Sketch) -> Sketch:
        return self._like({"projection": self.projection + other.projection}, {})


class CountSketch(Sketch):
    """CountSketch table ``C[r, h_r(i)] += s_r(i) a_i`` with ``rows`` rows of width ``size // rows``.

    Storage: ``rows * width`` words. Each row's ``<C_a[r], C_b[r]>`` is unbiased;
    with several rows the estimate is their median (Charikar et al. 2002),
    which trades unbiasedness for a ``log(1/delta)`` failure probability.
    """

    method = "cs"
    _array_names = ("table",)
    _param_names = ("rows",)

    @classmethod
    def _defect(cls, params, arrays):
        rows = params.get("rows")
        if not (isinstance(rows, int) and not isinstance(rows, bool) and rows >= 1):
            return f"rows must be a positive int, got {rows!r}"
        if arrays["table"].size % rows:
            return f"the table's {arrays['table'].size} counters do not fill {rows} rows"
        return super()._defect(params, arrays)

    @property
    def table(self) -> np.ndarray:
        """The counter table, float64, shape [rows, width]."""
        t = self._arrays["table"]
        return t.reshape(self.params["rows"], -1)

    @property
    def storage_size(self) -> int:
        return int(self._arrays["table"].size)

    def _inner(self, other: Sketch) -> float:
        per_row = np.einsum("rw,rw->r", self.table, other.table)
        return float(np.median(per_row))

    def _merge(self, other: Sketch) -> Sketch:
        return self._like({"table": self._arrays["table"] + other._arrays["table"]}, {})


def jl_sketch(hashes: np.ndarray, values: np.ndarray, *, size: int, seed: int) -> JLSketch:
    """JL-sketch the sparse vector (key hashes [n] uint64, values [n] float64)."""
    m = size
    rows = np.arange(m, dtype=np.uint64)[:, None]
    y = np.zeros(m)
    step = max(1, _BLOCK_WORDS // m)
    for s in range(0, hashes.size, step):
        signs = to_sign(hash_streams(hashes[s : s + step], rows))  # [m, block]
        y += signs @ values[s : s + step]
    y /= np.sqrt(m)
    return JLSketch(size=size, seed=seed, params={}, arrays={"projection": y}, scalars={})


def count_sketch(
    hashes: np.ndarray, values: np.ndarray, *, size: int, seed: int, rows: int
) -> CountSketch:
    """CountSketch the sparse vector (key hashes [n] uint64, values [n] float64)."""
    width = size // rows
    table = np.zeros((rows, width))
    for r in range(rows):
        bucket = to_bucket(hash_streams(hashes, 2 * r), width)
        sign = to_sign(hash_streams(hashes, 2 * r + 1))
        table[r] = np.bincount(bucket, weights=sign * values, minlength=width)
    return CountSketch(
        size=size, seed=seed, params={"rows": rows}, arrays={"table": table.ravel()}, scalars={}
    )
