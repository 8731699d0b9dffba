"""Coordinated ℓ2 threshold and priority sampling sketches (Daliri et al., VLDB 2024).

Each key gets a shared uniform hashed from (seed, key); a key is kept with
probability ``p_i = min(1, c a_i^2)`` (threshold, Algorithm 1: ``c`` adaptive so
the expected size is ``m``, or ``m / norm^2`` for parts) or by the ``m`` smallest
ranks ``u_i / a_i^2`` (priority, Algorithm 2). The estimate
``sum_{i in S_a ∩ S_b} a_i b_i / min(p^a_i, p^b_i)`` is unbiased, with error
``O(max(||a_I|| ||b||, ||a|| ||b_I||) / sqrt(m))`` (Theorems 3 and 5), in
``O(nnz)`` time.

Theory: docs/inner_products.md.
"""

from __future__ import annotations

import numpy as np

from kernelsketch.inner.base import Sketch
from kernelsketch.sketch.hashing import to_unit


class _SampleSketch(Sketch):
    """Shared storage and estimator of the coordinated sampling sketches."""

    _array_names = ("keys", "values")

    @property
    def keys(self) -> np.ndarray:
        """Hashes of the sampled keys, uint64 [k], sorted."""
        return self._arrays["keys"]

    @property
    def sample_values(self) -> np.ndarray:
        """The vector's values at the sampled keys, float64 [k]."""
        return self._arrays["values"]

    @property
    def storage_size(self) -> int:
        return 2 * int(self.keys.size) + 1

    def probabilities(self) -> np.ndarray:
        """Inclusion probability of each sampled key, float64 [k]."""
        raise NotImplementedError

    def _inner(self, other: Sketch) -> float:
        _, ia, ib = np.intersect1d(self.keys, other.keys, assume_unique=True, return_indices=True)
        if ia.size == 0:
            return 0.0
        p = np.minimum(self.probabilities()[ia], other.probabilities()[ib])
        return float(np.sum(self.sample_values[ia] * other.sample_values[ib] / p))

    def _union(self, other: _SampleSketch) -> tuple[np.ndarray, np.ndarray]:
        keys = np.concatenate([self.keys, other.keys])
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        if keys.size > 1 and (keys[1:] == keys[:-1]).any():
            raise ValueError(
                "other shares sampled keys with this sketch; sampling sketches merge only "
                "sketches of vectors with disjoint supports (aggregate duplicate keys first)"
            )
        return keys, np.concatenate([self.sample_values, other.sample_values])[order]


class ThresholdSketch(_SampleSketch):
    """Threshold sample: ``p_i = min(1, scale * a_i^2)``, about ``m = (size - 1) // 2`` entries.

    Storage ``2 k + 1`` words for ``k`` sampled entries (``E[k] <= m``). Merge
    gives the sketch of ``a + b`` for disjoint supports sketched with the same
    ``norm=`` (hence the same ``scale``).
    """

    method = "ts"
    _scalar_names = ("scale",)

    @property
    def scale(self) -> float:
        """The scale ``c`` in ``p_i = min(1, c a_i^2)`` (inf: everything kept)."""
        return self._scalars["scale"]

    def probabilities(self) -> np.ndarray:
        return np.minimum(1.0, self.scale * self.sample_values**2)

    def _merge(self, other: Sketch) -> Sketch:
        if self.scale != other.scale:
            raise ValueError(
                "other must be sketched with the same norm to merge threshold sketches: "
                f"got scales {self.scale!r} and {other.scale!r}; pass norm=<norm of the whole "
                "vector> to Sketcher.sketch for each part"
            )
        keys, values = self._union(other)
        return self._like({"keys": keys, "values": values}, {"scale": self.scale})


class PrioritySketch(_SampleSketch):
    """Priority sample: the ``m = (size - 1) // 2`` smallest ranks ``u_i / a_i^2`` and ``tau``.

    Storage ``2 min(m, nnz) + 1`` words. Merge gives the sketch of ``a + b`` for
    disjoint supports (bottom-m of a union is the bottom-m of the bottom-m's).
    """

    method = "ps"
    _scalar_names = ("tau",)

    @property
    def tau(self) -> float:
        """The ``(m+1)``-th smallest rank (inf when the whole support is kept)."""
        return self._scalars["tau"]

    def probabilities(self) -> np.ndarray:
        return np.minimum(1.0, self.tau * self.sample_values**2)

    def _merge(self, other: Sketch) -> Sketch:
        keys, values = self._union(other)
        keep, tau = priority_merge(keys, values**2, min(self.tau, other.tau), (self.size - 1) // 2)
        return self._like({"keys": keys[keep], "values": values[keep]}, {"tau": tau})


def adaptive_scale(weights: np.ndarray, m: int) -> float:
    """The ``c`` with ``sum_i min(1, c w_i) = m`` (water-filling; inf if ``len(w) <= m``)."""
    q = np.sort(weights)[::-1]  # descending
    n = q.size
    if n <= m:
        return np.inf
    # with the k largest clipped to 1: c_k = (m - k) / sum_{i >= k} q_i (0-based);
    # c_k is valid when q_k * c_k <= 1 (the next one is not clipped).
    tail = np.cumsum(q[::-1])[::-1]  # tail[k] = sum_{i >= k} q_i
    k = np.arange(m)
    c = (m - k) / tail[:m]
    valid = q[:m] * c <= 1.0
    return float(c[np.argmax(valid)]) if valid.any() else float(c[-1])


def threshold_sketch(
    hashes: np.ndarray,
    values: np.ndarray,
    *,
    size: int,
    seed: int,
    norm: float | None = None,
) -> ThresholdSketch:
    """Threshold-sample the sparse vector (nonzero key hashes [n] uint64, values [n] float64)."""
    m = (size - 1) // 2
    sq = values**2
    if norm is None:
        scale = adaptive_scale(sq, m)
    else:
        scale = m / norm**2 if norm > 0 else np.inf
    keep = threshold_keep(hashes, sq, scale)
    order = np.argsort(hashes[keep])
    return ThresholdSketch(
        size=size,
        seed=seed,
        params={},
        arrays={"keys": hashes[keep][order], "values": values[keep][order]},
        scalars={"scale": scale},
    )


def priority_sketch(
    hashes: np.ndarray, values: np.ndarray, *, size: int, seed: int
) -> PrioritySketch:
    """Priority-sample the sparse vector (nonzero key hashes [n] uint64, values [n] float64)."""
    keep, tau = priority_select(hashes, values**2, (size - 1) // 2)
    order = np.argsort(hashes[keep])
    keep = keep[order]
    return PrioritySketch(
        size=size,
        seed=seed,
        params={},
        arrays={"keys": hashes[keep], "values": values[keep]},
        scalars={"tau": tau},
    )


def threshold_keep(hashes: np.ndarray, weights: np.ndarray, scale: float) -> np.ndarray:
    """Coordinated threshold sample: keep ``i`` iff ``u_i <= min(1, scale * w_i)`` (bool mask)."""
    return to_unit(hashes) <= np.minimum(1.0, scale * weights)  # weights > 0: no inf * 0


def priority_select(hashes: np.ndarray, weights: np.ndarray, m: int) -> tuple[np.ndarray, float]:
    """Indices of the ``m`` smallest ranks ``u_i / w_i`` and ``tau``, the ``(m+1)``-th (inf if none)."""
    if hashes.size <= m:
        return np.arange(hashes.size), np.inf
    ranks = to_unit(hashes) / weights
    part = np.argpartition(ranks, m)
    return part[:m], float(ranks[part[m]])


def priority_merge(
    hashes: np.ndarray, weights: np.ndarray, tau: float, m: int
) -> tuple[np.ndarray, float]:
    """Bottom-m of the union of two priority samples (disjoint keys) whose smaller tau is ``tau``.

    Returns the kept mask and the merged tau: the (m+1)-th smallest rank of the
    union is the smaller of ``tau`` and the (m+1)-th smallest kept candidate.
    """
    ranks = to_unit(hashes) / weights
    keep = ranks < tau
    if keep.sum() > m:
        order = np.argsort(ranks, kind="stable")
        tau = min(tau, float(ranks[order[m]]))
        keep = np.zeros(hashes.size, dtype=bool)
        keep[order[:m]] = True
    return keep, tau
