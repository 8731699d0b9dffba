"""One coordinated sample of a keyed column for join statistics (threshold / priority).

Instead of three independent sketches of a column's count, sum and square
vectors, one set of keys is sampled with the weight
``w_i = max(c_i^2 / ||c||^2, s_i^2 / ||s||^2, q_i^2 / ||q||^2)`` and (key, c, s, q)
kept per sampled key (Daliri et al., VLDB 2024, §5); every inner product of the
join is estimated unbiasedly from the same joined sample, so the errors of a
correlation cancel instead of compounding. Storage: 4 words per key with
``duplicates="join"``, 2 otherwise, plus 4 scalars.

Theory: docs/inner_products.md.
"""

from __future__ import annotations

import numpy as np

from kernelsketch.inner.base import Sketch, l2_norm
from kernelsketch.inner.sampling import (
    adaptive_scale,
    inclusion_probabilities,
    priority_merge,
    priority_select,
    threshold_keep,
)

# log_scale: log of the threshold scale ("ts") or of tau ("ps"); the three vectors' norms
_SCALARS = ("log_scale", "norm_count", "norm_total", "norm_squares")


class JointSampleSketch(Sketch):
    """A coordinated sample of a keyed column's (count, sum, squares) per key.

    Built by :func:`kernelsketch.inner.join.sketch_column` for ``method="ts"``
    or ``"ps"``; ``params["duplicates"]`` records the duplicates policy.
    """

    _array_names = ("keys", "values")
    _scalar_names = _SCALARS
    _param_names = ("duplicates",)

    @classmethod
    def _defect(cls, params, arrays):
        width = 3 if params.get("duplicates") == "join" else 1
        if params.get("duplicates") not in ("join", "mean", "sum"):
            return f"duplicates must be 'join', 'mean' or 'sum', got {params.get('duplicates')!r}"
        if arrays["values"].size != width * arrays["keys"].size:
            return f"values must hold {width} number(s) per sampled key"
        return super()._defect(params, arrays)

    @property
    def keys(self) -> np.ndarray:
        """Hashes of the sampled keys, uint64 [k], sorted."""
        return self._arrays["keys"]

    @property
    def full(self) -> bool:
        """Whether (c, s, q) are stored per key (``duplicates="join"``) or only s."""
        return self.params["duplicates"] == "join"

    def vectors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(count, sum, sum of squares) at the sampled keys, float64 [k] each."""
        v = self._arrays["values"]
        if self.full:
            v = v.reshape(-1, 3)
            return v[:, 0], v[:, 1], v[:, 2]
        return np.ones(v.size), v, v**2

    def weights(self) -> np.ndarray:
        """``w_i``: the largest normalised squared entry of the three vectors, [k]."""
        norms = [self._scalars[n] for n in _SCALARS[1:]]
        return _weights(self.vectors(), norms)

    def probabilities(self) -> np.ndarray:
        """Inclusion probability ``min(1, scale * w_i)`` of each sampled key, [k]."""
        return inclusion_probabilities(self._scalars["log_scale"], _log(self.weights()))

    @property
    def storage_size(self) -> int:
        return int(self.keys.size) * (4 if self.full else 2) + len(_SCALARS)

    def join_sums(self, other: JointSampleSketch) -> tuple[float, ...]:
        """Estimated (n, sum x, sum y, sum x^2, sum y^2, sum xy) of the join with ``other``."""
        self._check_compatible(other, "other")
        _, ia, ib = np.intersect1d(self.keys, other.keys, assume_unique=True, return_indices=True)
        p = np.minimum(self.probabilities()[ia], other.probabilities()[ib])
        (ca, sa, qa), (cb, sb, qb) = (
            [v[i] / np.sqrt(p) for v in sk.vectors()] for sk, i in ((self, ia), (other, ib))
        )
        return tuple(
            float(x @ y) for x, y in ((ca, cb), (sa, cb), (ca, sb), (qa, cb), (ca, qb), (sa, sb))
        )

    def _inner(self, other: Sketch) -> float:
        raise TypeError(
            "a joint column sample holds three vectors; use kernelsketch.inner.join_statistics"
        )

    def _same_norms(self, other: JointSampleSketch) -> None:
        mine = [self._scalars[n] for n in _SCALARS[1:]]
        theirs = [other._scalars[n] for n in _SCALARS[1:]]
        if mine != theirs:
            raise ValueError(
                "other must be sketched with the same norms to merge column samples: got "
                f"{mine} and {theirs}; sketch key-disjoint parts with the whole column's norms"
            )

    def _union(self, other: JointSampleSketch) -> tuple[np.ndarray, np.ndarray]:
        width = 3 if self.full else 1
        keys = np.concatenate([self.keys, other.keys])
        values = np.concatenate(
            [self._arrays["values"].reshape(-1, width), other._arrays["values"].reshape(-1, width)]
        )
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], values[order]
        if keys.size > 1 and (keys[1:] == keys[:-1]).any():
            raise ValueError(
                "other shares sampled keys with this sketch; column samples merge only "
                "key-disjoint parts of a column"
            )
        return keys, values


class JointThresholdSketch(JointSampleSketch):
    """Joint threshold sample of a column (docs/inner_products.md)."""

    method = "ts-column"

    def _merge(self, other: Sketch) -> Sketch:
        self._same_norms(other)
        if self._scalars["log_scale"] != other._scalars["log_scale"]:
            raise ValueError(
                "other must be sketched with the same scale to merge column threshold samples; "
                "sketch key-disjoint parts with the whole column's norms"
            )
        keys, values = self._union(other)
        return self._like({"keys": keys, "values": values.ravel()}, dict(self._scalars))


class JointPrioritySketch(JointSampleSketch):
    """Joint priority sample of a column (docs/inner_products.md)."""

    method = "ps-column"

    def _merge(self, other: Sketch) -> Sketch:
        self._same_norms(other)
        keys, values = self._union(other)
        probe = self._like({"keys": keys, "values": values.ravel()}, dict(self._scalars))
        log_tau = min(self._scalars["log_scale"], other._scalars["log_scale"])
        keep, log_tau = priority_merge(
            keys, _log(probe.weights()), log_tau, entries(self.size, self.full)
        )
        return self._like(
            {"keys": keys[keep], "values": values[keep].ravel()},
            {**self._scalars, "log_scale": log_tau},
        )


def _weights(vectors, norms) -> np.ndarray:
    return np.max(
        [(v / n) ** 2 if n > 0 else np.zeros_like(v) for v, n in zip(vectors, norms)], axis=0
    )


def _log(w: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(w)


def entries(size: int, full: bool) -> int:
    """Sampled keys that fit in ``size`` words (4 scalars, 4 or 2 words per key)."""
    return (size - len(_SCALARS)) // (4 if full else 2)


def joint_sample(
    hashes: np.ndarray,
    vectors: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    method: str,
    size: int,
    seed: int,
    duplicates: str,
    norms: tuple[float, float, float] | None = None,
) -> JointSampleSketch:
    """Sample a column given its distinct key hashes [k] and (count, sum, squares) [k] each.

    ``norms``: the whole column's vector norms when this is one key-disjoint part.
    """
    full = duplicates == "join"
    m = entries(size, full)
    adaptive = norms is None
    if adaptive:
        norms = tuple(l2_norm(v) for v in vectors)
    w = _weights(vectors, norms)
    log_w = _log(w)
    if method == "ts":
        log_scale = float(np.log(adaptive_scale(w, m) if adaptive else m / 3.0))
        keep = np.flatnonzero(threshold_keep(hashes, log_w, log_scale))
        cls = JointThresholdSketch
    else:
        keep, log_scale = priority_select(hashes, log_w, m)
        cls = JointPrioritySketch
    keep = keep[np.argsort(hashes[keep])]
    values = np.stack(vectors, axis=1)[keep] if full else vectors[1][keep]
    scalars = dict(zip(_SCALARS, (log_scale, *norms)))
    return cls(
        size=size,
        seed=seed,
        params={"duplicates": duplicates},
        arrays={"keys": hashes[keep], "values": values.ravel()},
        scalars=scalars,
    )
