"""Coordinated ℓ2 threshold and priority sampling sketches (Daliri et al., VLDB 2024).

Each key gets a shared uniform hashed from (seed, key); a key is kept with
probability ``p_i = min(1, c a_i^2)`` (threshold, Algorithm 1: ``c`` adaptive so
the expected size is ``m``, or ``m / norm^2`` for parts) or by the ``m`` smallest
ranks ``u_i / a_i^2`` (priority, Algorithm 2). The estimate
``sum_{i in S_a ∩ S_b} a_i b_i / min(p^a_i, p^b_i)`` is unbiased, with error
``O(max(||a_I|| ||b||, ||a|| ||b_I||) / sqrt(m))`` (Theorems 3 and 5), in
``O(nnz)`` time. Scales, ranks and probabilities are computed from logarithms
(``log c``, ``log u_i - 2 log|a_i|``), so no entry magnitude over- or underflows.

Theory: docs/inner_products.md.
"""

from __future__ import annotations

import numpy as np

from kernelsketch.inner.base import Sketch, l2_norm
from kernelsketch.sketch.hashing import to_unit


class _SampleSketch(Sketch):
    """Shared storage and estimator of the coordinated sampling sketches."""

    _array_names = ("keys", "values")

    @classmethod
    def _defect(cls, params, arrays):
        if arrays["keys"].size != arrays["values"].size:
            return "keys and values must have one entry per sampled key"
        return super()._defect(params, arrays)

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
    _scalar_names = ("log_scale",)

    @property
    def log_scale(self) -> float:
        """``log c`` for the scale ``c`` in ``p_i = min(1, c a_i^2)`` (inf: everything kept)."""
        return self._scalars["log_scale"]

    @property
    def scale(self) -> float:
        """The scale ``c = exp(log_scale)`` (over- or underflows for norms beyond 1e+-154)."""
        return float(np.exp(self.log_scale))

    def probabilities(self) -> np.ndarray:
        return inclusion_probabilities(self.log_scale, log_weights(self.sample_values))

    def _merge(self, other: Sketch) -> Sketch:
        if self.log_scale != other.log_scale:
            raise ValueError(
                "other must be sketched with the same norm to merge threshold sketches: "
                f"got log scales {self.log_scale!r} and {other.log_scale!r}; pass "
                "norm=<norm of the whole vector> to Sketcher.sketch for each part"
            )
        keys, values = self._union(other)
        return self._like({"keys": keys, "values": values}, {"log_scale": self.log_scale})


class PrioritySketch(_SampleSketch):
    """Priority sample: the ``m = (size - 1) // 2`` smallest ranks ``u_i / a_i^2`` and ``tau``.

    Storage ``2 min(m, nnz) + 1`` words. Merge gives the sketch of ``a + b`` for
    disjoint supports (bottom-m of a union is the bottom-m of the bottom-m's).
    """

    method = "ps"
    _scalar_names = ("log_tau",)

    @property
    def log_tau(self) -> float:
        """``log tau``, tau the ``(m+1)``-th smallest rank (inf when the whole support is kept)."""
        return self._scalars["log_tau"]

    @property
    def tau(self) -> float:
        """``tau = exp(log_tau)`` (over- or underflows for entries beyond 1e+-154)."""
        return float(np.exp(self.log_tau))

    def probabilities(self) -> np.ndarray:
        return inclusion_probabilities(self.log_tau, log_weights(self.sample_values))

    def _merge(self, other: Sketch) -> Sketch:
        keys, values = self._union(other)
        keep, log_tau = priority_merge(
            keys, log_weights(values), min(self.log_tau, other.log_tau), (self.size - 1) // 2
        )
        return self._like({"keys": keys[keep], "values": values[keep]}, {"log_tau": log_tau})


def log_weights(values: np.ndarray) -> np.ndarray:
    """``log(values**2)`` without over- or underflow (``-inf`` for zeros)."""
    with np.errstate(divide="ignore"):
        return 2.0 * np.log(np.abs(values))


def inclusion_probabilities(log_scale: float, log_w: np.ndarray) -> np.ndarray:
    """``min(1, exp(log_scale) * w)`` from ``log_scale`` and ``log_w = log w``."""
    return np.exp(np.minimum(0.0, log_scale + log_w))


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
    if norm is None:
        own = l2_norm(values)
        # the water-filling scale of the normalised weights, mapped back: c = c_n / ||a||^2
        scale = adaptive_scale((values / own) ** 2, m) if own > 0 else np.inf
        log_scale = float(np.log(scale) - 2.0 * np.log(own)) if own > 0 else np.inf
    else:
        log_scale = float(np.log(m) - 2.0 * np.log(norm)) if norm > 0 else np.inf
    keep = threshold_keep(hashes, log_weights(values), log_scale)
    order = np.argsort(hashes[keep])
    return ThresholdSketch(
        size=size,
        seed=seed,
        params={},
        arrays={"keys": hashes[keep][order], "values": values[keep][order]},
        scalars={"log_scale": log_scale},
    )


def priority_sketch(
    hashes: np.ndarray, values: np.ndarray, *, size: int, seed: int
) -> PrioritySketch:
    """Priority-sample the sparse vector (nonzero key hashes [n] uint64, values [n] float64)."""
    keep, log_tau = priority_select(hashes, log_weights(values), (size - 1) // 2)
    order = np.argsort(hashes[keep])
    keep = keep[order]
    return PrioritySketch(
        size=size,
        seed=seed,
        params={},
        arrays={"keys": hashes[keep], "values": values[keep]},
        scalars={"log_tau": log_tau},
    )


def threshold_keep(hashes: np.ndarray, log_w: np.ndarray, log_scale: float) -> np.ndarray:
    """Coordinated threshold sample: keep ``i`` iff ``u_i <= min(1, scale * w_i)`` (bool mask),
    from ``log_w = log w`` and ``log_scale = log scale``."""
    return np.log(to_unit(hashes)) <= np.minimum(0.0, log_scale + log_w)


def _log_ranks(hashes: np.ndarray, log_w: np.ndarray) -> np.ndarray:
    return np.log(to_unit(hashes)) - log_w  # log(u_i / w_i); inf for w_i = 0


def priority_select(hashes: np.ndarray, log_w: np.ndarray, m: int) -> tuple[np.ndarray, float]:
    """Indices of the ``m`` smallest ranks ``u_i / w_i`` and ``log tau``, tau the ``(m+1)``-th
    rank (inf if none), from ``log_w = log w``."""
    if hashes.size <= m:
        return np.arange(hashes.size), np.inf
    ranks = _log_ranks(hashes, log_w)
    part = np.argpartition(ranks, m)
    return part[:m], float(ranks[part[m]])


def priority_merge(
    hashes: np.ndarray, log_w: np.ndarray, log_tau: float, m: int
) -> tuple[np.ndarray, float]:
    """Bottom-m of the union of two priority samples (disjoint keys) whose smaller tau is
    ``exp(log_tau)``; ``log_w = log w``.

    Returns the kept mask and the merged ``log tau``: the (m+1)-th smallest rank of the
    union is the smaller of ``tau`` and the (m+1)-th smallest kept candidate.
    """
    ranks = _log_ranks(hashes, log_w)
    keep = ranks < log_tau
    if keep.sum() > m:
        order = np.argsort(ranks, kind="stable")
        log_tau = min(log_tau, float(ranks[order[m]]))
        keep = np.zeros(hashes.size, dtype=bool)
        keep[order[:m]] = True
    return keep, log_tau
