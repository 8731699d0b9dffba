"""MinHash and Weighted MinHash inner-product sketches (Bessa et al., PODS 2023).

Per hash function, the minimum hash over the support and the value at the
minimising key; matches between two sketches sample the intersection of
supports, and the minima estimate the size of the union (MinHash, §3) or the
mass ``M = sum_i max(w^a_i, w^b_i)`` of the weights ``w_i = a_i^2 / ||a||^2``
(Weighted MinHash, §4, Algorithms 3-4). Weighted MinHash error:
``O(max(||a_I|| ||b||, ||a|| ||b_I||) / sqrt(m))``, ``I`` the intersection of
supports (Theorem 2). The weighted sample is exact (Ioffe's ICWS, ICDM 2010)
instead of the paper's discretisation.

Theory (estimators, ICWS): docs/inner_products.md.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kernelsketch.inner.base import Sketch
from kernelsketch.sketch.hashing import hash_streams, to_unit, to_unit_pair

_BLOCK_WORDS = 1 << 21


def _running_argmin(
    hashes: np.ndarray, m: int, score: Callable[[np.ndarray, slice], np.ndarray], per_key: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per hash function, the minimum of ``score`` over keys and its key index (-1 if none)."""
    best = np.full(m, np.inf)
    arg = np.full(m, -1, dtype=np.int64)
    step = max(1, _BLOCK_WORDS // (m * per_key))
    rows = np.arange(m)
    for s in range(0, hashes.size, step):
        block = slice(s, min(s + step, hashes.size))
        sc = score(hashes[block], block)  # [m, block]
        j = sc.argmin(axis=1)
        v = sc[rows, j]
        better = v < best
        best[better] = v[better]
        arg[better] = j[better] + s
    return best, arg


def _union_estimate(ha: np.ndarray, hb: np.ndarray) -> float:
    """``(m - 1) / sum_j min(ha, hb)``: unbiased rate of the Exp(M) coordinate minima."""
    total = float(np.minimum(ha, hb).sum())
    if not np.isfinite(total) or total <= 0.0:
        return 0.0
    return (ha.size - 1) / total


def _matches(ha: np.ndarray, hb: np.ndarray) -> np.ndarray:
    return (ha == hb) & np.isfinite(ha)


class MinHashSketch(Sketch):
    """Unweighted MinHash sketch: ``m = size // 2`` (hash value, entry value) pairs.

    Storage ``2 m`` words. The estimator is consistent (ratio of two estimates),
    not exactly unbiased. Merge gives the sketch of ``a + b`` for disjoint supports.
    """

    method = "mh"
    _array_names = ("hashes", "values")

    @classmethod
    def _defect(cls, params, arrays):
        if arrays["hashes"].size != arrays["values"].size:
            return "hashes and values must have one entry per hash function"
        return super()._defect(params, arrays)

    @property
    def hash_values(self) -> np.ndarray:
        """Minimum Exp(1) hash per function, float64 [m] (inf for the zero vector)."""
        return self._arrays["hashes"]

    @property
    def sample_values(self) -> np.ndarray:
        """The vector's value at each minimising key, float64 [m]."""
        return self._arrays["values"]

    @property
    def storage_size(self) -> int:
        return 2 * int(self.hash_values.size)

    def _inner(self, other: Sketch) -> float:
        ha, hb = self.hash_values, other.hash_values
        match = _matches(ha, hb)
        m = ha.size
        return (
            _union_estimate(ha, hb)
            / m
            * float(self.sample_values[match] @ other.sample_values[match])
        )

    def _min_arrays(self, other: MinHashSketch) -> dict[str, np.ndarray]:
        # disjoint supports: the union's minimum is the smaller of the two minima
        take = other.hash_values < self.hash_values
        return {
            "hashes": np.where(take, other.hash_values, self.hash_values),
            "values": np.where(take, other.sample_values, self.sample_values),
        }

    def _merge(self, other: Sketch) -> Sketch:
        return self._like(self._min_arrays(other), {})


class WeightedMinHashSketch(MinHashSketch):
    """Weighted MinHash sketch on ``a_i^2 / ||a||^2``: ``m = (size - 1) // 2`` samples + the norm.

    Storage ``2 m + 1`` words. Merge gives the sketch of ``a + b`` for disjoint
    supports when both parts were sketched with the same ``norm=`` (the norm of
    the whole vector), since the sampling weights are normalised by it.
    """

    method = "wmh"
    _scalar_names = ("norm",)

    @property
    def norm(self) -> float:
        """The ℓ2 norm the weights were normalised by."""
        return self._scalars["norm"]

    @property
    def storage_size(self) -> int:
        return 2 * int(self.hash_values.size) + 1

    def _inner(self, other: Sketch) -> float:
        ha, hb = self.hash_values, other.hash_values
        match = _matches(ha, hb)
        if not match.any():
            return 0.0
        # a_i b_i / min(w^a_i, w^b_i) with w = (v / norm)^2, as norm_a norm_b times a ratio
        # of normalised values (<= 1 in magnitude), so nothing over- or underflows.
        ua = self.sample_values[match] / self.norm
        ub = other.sample_values[match] / other.norm
        ratio = np.where(np.abs(ua) <= np.abs(ub), ub / ua, ua / ub)
        scaled = _union_estimate(ha, hb) / ha.size * float(np.sum(ratio))
        return scaled * self.norm * other.norm

    def _merge(self, other: Sketch) -> Sketch:
        if self.norm != other.norm:
            raise ValueError(
                "other must be sketched with the same norm to merge Weighted MinHash sketches: "
                f"got norms {self.norm!r} and {other.norm!r}; pass norm=<norm of the whole "
                "vector> to Sketcher.sketch for each part"
            )
        return self._like(self._min_arrays(other), {"norm": self.norm})


def minhash_sketch(
    hashes: np.ndarray, values: np.ndarray, *, size: int, seed: int
) -> MinHashSketch:
    """MinHash-sketch the sparse vector (nonzero key hashes [n] uint64, values [n] float64)."""
    m = size // 2
    streams = np.arange(m, dtype=np.uint64)[:, None]

    def score(h: np.ndarray, _: slice) -> np.ndarray:
        return -np.log(to_unit(hash_streams(h, streams)))

    best, arg = _running_argmin(hashes, m, score, per_key=1)
    sample = np.where(arg >= 0, values[np.maximum(arg, 0)] if values.size else 0.0, 0.0)
    return MinHashSketch(
        size=size, seed=seed, params={}, arrays={"hashes": best, "values": sample}, scalars={}
    )


def weighted_minhash_sketch(
    hashes: np.ndarray, values: np.ndarray, *, size: int, seed: int, norm: float
) -> WeightedMinHashSketch:
    """ICWS-sketch the weights ``values**2 / norm**2`` of the sparse vector.

    ``norm`` is the ℓ2 norm of the whole vector (of ``values`` unless this is a part).
    """
    m = (size - 1) // 2
    base = 3 * np.arange(m, dtype=np.uint64)[:, None]
    log_w = 2.0 * (np.log(np.abs(values)) - np.log(norm)) if values.size else values

    def score(h: np.ndarray, block: slice) -> np.ndarray:
        u0, u1 = to_unit_pair(hash_streams(h, base))
        u2, u3 = to_unit_pair(hash_streams(h, base + np.uint64(1)))
        beta = to_unit(hash_streams(h, base + np.uint64(2)))
        r = -np.log(u0 * u1)  # Gamma(2, 1)
        log_c = np.log(-np.log(u2 * u3))  # log of c ~ Gamma(2, 1)
        t = np.floor(log_w[block] / r + beta)
        return log_c - r * (t - beta + 1.0)  # log a_ij (Ioffe 2010, Algorithm 1)

    best, arg = _running_argmin(hashes, m, score, per_key=6)
    sample = np.where(arg >= 0, values[np.maximum(arg, 0)] if values.size else 0.0, 0.0)
    return WeightedMinHashSketch(
        size=size,
        seed=seed,
        params={},
        arrays={"hashes": np.exp(best), "values": sample},
        scalars={"norm": norm},
    )
