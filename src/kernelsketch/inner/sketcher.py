"""``Sketcher``: validate a vector (dense or sparse with arbitrary keys) and sketch it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kernelsketch._checks import check_choice, check_float, check_int, check_tensor
from kernelsketch.inner.base import Sketch, l2_norm
from kernelsketch.inner.linear import count_sketch, jl_sketch
from kernelsketch.inner.minhash import minhash_sketch, weighted_minhash_sketch
from kernelsketch.inner.sampling import priority_sketch, threshold_sketch
from kernelsketch.sketch.hashing import hash_keys, seed_to_uint64

METHODS = ("wmh", "jl", "cs", "mh", "ts", "ps")
# smallest storage budget per method (2 samples for the hashing methods)
_MIN_SIZE = {"jl": 1, "cs": 1, "mh": 4, "wmh": 5, "ts": 3, "ps": 3}
# largest storage budget: 2**27 words are 1 GiB of float64 per sketch (and per hashing block)
MAX_SIZE = 2**27


def as_float_vector(name: str, x: Any) -> np.ndarray:
    """Validate a 1-D real, finite, non-empty vector and return it as float64 numpy.

    Accepts numpy arrays, torch tensors (any device), lists and pandas Series.
    """
    if isinstance(x, torch.Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
        t = x.detach().to(device="cpu", dtype=torch.float64)
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
        if arr.ndim != 1:  # before ascontiguousarray, which makes a 0-d array 1-d
            raise ValueError(f"{name} must have 1 dimensions, got shape {list(arr.shape)}")
        arr = np.ascontiguousarray(arr, dtype=np.float64)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    check_tensor(name, t, ndim=1, dtypes=(torch.float64,))
    return t.numpy()


class Sketcher:
    """Build coordinated inner-product sketches of vectors.

    Sketches made by equal sketchers (same method, size, seed and options),
    in any process, share their hashing: ``s.sketch(a).inner_product(s.sketch(b))``
    estimates ``<a, b>``.

    Parameters
    ----------
    method : {"wmh", "jl", "cs", "mh", "ts", "ps"}
        ``"wmh"`` Weighted MinHash (Bessa et al. 2023); ``"jl"`` Rademacher
        Johnson-Lindenstrauss; ``"cs"`` CountSketch; ``"mh"`` unweighted
        MinHash; ``"ts"`` threshold sampling and ``"ps"`` priority sampling
        (Daliri et al. 2024), both coordinated and ℓ2-weighted.
    size : int
        Storage budget in 64-bit words, counted as in the papers so methods
        compare at equal storage: JL keeps ``size`` numbers, CountSketch
        ``rows x (size // rows)`` counters; MinHash ``size // 2`` samples (hash,
        value); Weighted MinHash ``(size - 1) // 2`` samples plus the norm;
        threshold sampling ``(size - 1) // 2`` entries (index, value) in
        expectation plus its scale; priority sampling ``(size - 1) // 2`` entries
        plus its threshold.
        At most ``MAX_SIZE = 2**27`` (1 GiB of float64).
    seed : int, default 0
        Hashing seed in [0, 2**64).
    rows : int, default 1
        CountSketch rows; the estimate is the median of the rows' estimates
        (unbiased only for ``rows=1``). Must be 1 for other methods.

    References
    ----------
    Bessa, Daliri, Freire, Musco, Musco, Santos, Zhang. Weighted Minwise Hashing
    Beats Linear Sketching for Inner Product Estimation. PODS 2023, arXiv 2301.05811.
    Daliri, Freire, Musco, Santos, Zhang. Sampling Methods for Inner Product
    Sketching. VLDB 2024, arXiv 2309.16157.

    Examples
    --------
    >>> s = Sketcher("ps", size=401, seed=7)
    >>> a = s.sketch(np.array([1.0, 0.0, 2.0]))
    >>> b = s.sketch((["x", "y"], [3.0, 4.0]))   # sparse, string keys
    """

    def __init__(self, method: str, size: int, seed: int = 0, *, rows: int = 1) -> None:
        self.method = check_choice("method", method, METHODS)
        self.size = check_int("size", size, min=_MIN_SIZE[method], max=MAX_SIZE)
        self.seed = int(seed_to_uint64(seed))
        self.rows = check_int("rows", rows, min=1)
        if method != "cs" and rows != 1:
            raise ValueError(f"rows applies to method='cs' only, got rows={rows} with {method!r}")
        if method == "cs" and size < rows:
            raise ValueError(f"size must be >= rows={rows} for CountSketch, got {size}")

    def __repr__(self) -> str:
        extra = f", rows={self.rows}" if self.method == "cs" else ""
        return f"Sketcher({self.method!r}, size={self.size}, seed={self.seed}{extra})"

    def sketch(self, x: Any, *, norm: float | None = None) -> Sketch:
        """Sketch one vector.

        Parameters
        ----------
        x : array_like [n] or tuple (indices, values)
            Dense vector (numpy, torch on any device, list; index ``i`` is key
            ``i``), or sparse ``(indices, values)`` of equal length ``k`` whose
            indices are integers (any 64-bit value), strings or datetimes;
            duplicate indices are summed. Values must be real and finite.
        norm : float, optional
            ℓ2 norm of the *whole* vector when ``x`` is one part of it (disjoint
            supports), so that parts sketched separately merge into the sketch
            of the whole (needed for ``"wmh"`` and ``"ts"``, whose sampling is
            normalised; ignored by the others). Default: the norm of ``x``.

        Returns
        -------
        Sketch
        """
        hashes, values = self.prepare(x)
        return self.sketch_hashed(hashes, values, norm=norm)

    def update(self, sketch: Sketch, x: Any) -> Sketch:
        """Streaming update of a linear sketch: the sketch of ``a + x`` from that of ``a``.

        ``x`` is a dense or sparse update as in :meth:`sketch` (e.g. new counts
        for a few keys). Only ``"jl"`` and ``"cs"`` are linear; sampling sketches
        merge only parts with disjoint supports (:meth:`Sketch.merge`).
        """
        if self.method not in ("jl", "cs"):
            raise ValueError(
                f"streaming updates need a linear sketch (method 'jl' or 'cs'), got {self.method!r}"
            )
        return sketch.merge(self.sketch(x))

    def prepare(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """Validate ``x`` and return (distinct key hashes uint64 [k], values float64 [k])."""
        if isinstance(x, tuple):
            if len(x) != 2:
                raise ValueError(
                    f"x must be a vector or a tuple (indices, values), got a {len(x)}-tuple"
                )
            indices, vals = x
            values = as_float_vector("values", vals)
            hashes = hash_keys(indices, self.seed)
            if hashes.size != values.size:
                raise ValueError(
                    f"indices and values must have the same length, got {hashes.size} indices "
                    f"and {values.size} values"
                )
            uniq, inverse = np.unique(hashes, return_inverse=True)
            if uniq.size != hashes.size:
                hashes, values = uniq, np.bincount(inverse, weights=values, minlength=uniq.size)
        else:
            values = as_float_vector("x", x)
            hashes = hash_keys(np.arange(values.size, dtype=np.int64), self.seed)
        return hashes, values

    def sketch_hashed(
        self, hashes: np.ndarray, values: np.ndarray, *, norm: float | None = None
    ) -> Sketch:
        """Sketch a vector given as distinct key hashes (uint64, from :meth:`prepare` or
        :func:`~kernelsketch.sketch.hashing.hash_keys` with this seed) and float64 values."""
        nz = values != 0
        hashes, values = hashes[nz], values[nz]
        own = l2_norm(values, "x")
        if norm is not None:
            norm = check_float("norm", norm, min=0.0)
            if own > norm * (1 + 1e-9):
                raise ValueError(f"norm must be >= the norm of x ({own}), got {norm}")
        kw = {"size": self.size, "seed": self.seed}
        if self.method == "jl":
            return jl_sketch(hashes, values, **kw)
        if self.method == "cs":
            return count_sketch(hashes, values, rows=self.rows, **kw)
        if self.method == "mh":
            return minhash_sketch(hashes, values, **kw)
        if self.method == "wmh":
            scale = own if norm is None else norm
            return weighted_minhash_sketch(hashes, values, norm=scale if scale > 0 else 1.0, **kw)
        if self.method == "ts":
            return threshold_sketch(hashes, values, norm=norm, **kw)
        return priority_sketch(hashes, values, **kw)
