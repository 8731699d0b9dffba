"""Join size, sums and post-join correlation of two keyed columns, from sketches.

For a keyed column, per key: the row count ``c``, sum ``s`` and sum of squares
``q``; the statistics of the inner join of columns A and B are inner products,
``n = <c_A, c_B>``, ``sum x = <s_A, c_B>``, ``sum y = <c_A, s_B>``,
``sum xy = <s_A, s_B>``, ``sum x^2 = <q_A, c_B>``, ``sum y^2 = <c_A, q_B>``
(Daliri et al. 2024, §5; Santos et al. 2021), estimated from one
:class:`ColumnSketch` per column without joining.

Duplicate keys (``duplicates=``): ``"mean"`` (default, one row per key, its
mean), ``"join"`` (SQL inner-join semantics, many-to-many), ``"sum"`` (one row per
key, its sum). NaN values (``nan=``): ``"raise"`` (default) or ``"drop"``; infinite
values always raise.

Theory: docs/inner_products.md.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernelsketch._checks import check_choice, check_int
from kernelsketch.inner.base import Sketch
from kernelsketch.inner.joint import joint_sample
from kernelsketch.inner.sketcher import MAX_SIZE, METHODS, Sketcher
from kernelsketch.sketch.hashing import hash_keys

__all__ = [
    "ColumnSketch",
    "JoinStatistics",
    "estimate_join",
    "exact_join_statistics",
    "join_correlation",
    "join_size",
    "join_statistics",
    "keyed_vectors",
    "sketch_column",
    "sketch_keyed_vectors",
]

DUPLICATES = ("join", "mean", "sum")
NAN_POLICIES = ("raise", "drop")
_LEN = struct.Struct("<I")
# Sums of squares of values beyond 2**511 overflow float64, and squares of a column whose
# values are all below 2**-511 underflow; join_correlation rescales columns into range.
_MAX_ABS = 2.0**511
_MIN_ABS = 2.0**-511


@dataclass(frozen=True)
class JoinStatistics:
    """Statistics of the inner join of columns A (values x) and B (values y) on their keys.

    Attributes
    ----------
    size : float
        Number of joined rows ``n``.
    sum_a, sum_b, sum_sq_a, sum_sq_b, sum_ab : float
        ``sum x``, ``sum y``, ``sum x^2``, ``sum y^2``, ``sum x y`` over joined rows.
    """

    size: float
    sum_a: float
    sum_b: float
    sum_sq_a: float
    sum_sq_b: float
    sum_ab: float

    @property
    def mean_a(self) -> float:
        """Mean of x over the joined rows (NaN when the join is empty)."""
        return self.sum_a / self.size if self.size > 0 else math.nan

    @property
    def mean_b(self) -> float:
        """Mean of y over the joined rows (NaN when the join is empty)."""
        return self.sum_b / self.size if self.size > 0 else math.nan

    @property
    def correlation(self) -> float:
        """Pearson correlation of x and y over the joined rows, clipped to [-1, 1].

        NaN when the join is empty or an estimated variance is not positive.
        """
        n = self.size
        var_a = n * self.sum_sq_a - self.sum_a**2
        var_b = n * self.sum_sq_b - self.sum_b**2
        if n <= 0 or var_a <= 0 or var_b <= 0:
            return math.nan
        r = (n * self.sum_ab - self.sum_a * self.sum_b) / (math.sqrt(var_a) * math.sqrt(var_b))
        return float(min(1.0, max(-1.0, r)))


@dataclass(frozen=True)
class ColumnSketch:
    """The sketch of one keyed column for join estimation.

    Attributes
    ----------
    sketches : tuple of Sketch
        For ``"ts"`` / ``"ps"``: one joint coordinated sample of the keys holding
        (count, sum, squares) per sampled key (:mod:`.joint`, Daliri et al. §5).
        For the other methods (black-box reduction): three sketches of the
        count, sum and square vectors, a third of the budget each.
    duplicates : str
        How duplicate keys were treated; both columns of a join must agree.
    """

    sketches: tuple[Sketch, ...]
    duplicates: str

    @property
    def storage_size(self) -> int:
        """Storage in 64-bit words (over all inner sketches)."""
        return sum(s.storage_size for s in self.sketches)

    def merge(self, other: ColumnSketch) -> ColumnSketch:
        """Sketch of the union of two key-disjoint parts of a column (see :meth:`Sketch.merge`)."""
        _check_pair(self, other)
        merged = tuple(x.merge(y) for x, y in zip(self.sketches, other.sketches))
        return ColumnSketch(merged, self.duplicates)

    def to_bytes(self) -> bytes:
        """Serialize: the duplicates policy and the inner sketches, length-prefixed."""
        parts = [self.duplicates.encode()] + [s.to_bytes() for s in self.sketches]
        return b"".join(_LEN.pack(len(p)) + p for p in parts)

    @staticmethod
    def from_bytes(data: bytes) -> ColumnSketch:
        """Rebuild a column sketch written by :meth:`to_bytes`."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        data, parts, offset = bytes(data), [], 0
        while offset < len(data):
            if offset + _LEN.size > len(data):
                raise ValueError("data is truncated: incomplete length prefix")
            (n,) = _LEN.unpack_from(data, offset)
            offset += _LEN.size
            parts.append(data[offset : offset + n])
            offset += n
        if len(parts) not in (2, 4) or offset != len(data):
            raise ValueError(f"data must hold 2 or 4 length-prefixed parts, found {len(parts)}")
        try:
            policy = parts[0].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"data has an undecodable duplicates policy {parts[0][:20]!r}") from None
        duplicates = check_choice("duplicates", policy, DUPLICATES)
        return ColumnSketch(tuple(Sketch.from_bytes(p) for p in parts[1:]), duplicates)


def _check_pair(a: Any, b: Any) -> None:
    for name, col in (("a", a), ("b", b)):
        if not isinstance(col, ColumnSketch):
            raise TypeError(f"{name} must be a ColumnSketch, got {type(col).__name__}")
    if a.duplicates != b.duplicates:
        raise ValueError(
            f"b must use the same duplicates policy as a, got {a.duplicates!r} and {b.duplicates!r}"
        )


def _values(name: str, values: Any, n: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {list(arr.shape)}")
    if arr.size != n:
        raise ValueError(f"{name} must have one value per key ({n} keys), got {arr.size}")
    if np.isinf(arr).any():
        raise ValueError(f"{name} must be finite or NaN, found infinite values")
    top = float(np.nanmax(np.abs(arr))) if arr.size and not np.isnan(arr).all() else 0.0
    if top > _MAX_ABS / math.sqrt(max(n, 1)) or 0.0 < top < _MIN_ABS:
        raise ValueError(
            f"{name} must have magnitudes whose sums of squares fit float64 (largest below "
            f"{_MAX_ABS / math.sqrt(max(n, 1)):.3g} for {n} rows and above {_MIN_ABS:.3g}), got "
            f"a largest magnitude of {top:.3g}; join_correlation rescales its columns itself"
        )
    return arr


def check_options(method: str, size: int, rows: int) -> None:
    """Validate the sketch options shared by the column sketches."""
    check_choice("method", method, METHODS)
    check_int("size", size, min=15, max=MAX_SIZE)
    check_int("rows", rows, min=1)
    if method != "cs" and rows != 1:
        raise ValueError(f"rows applies to method='cs' only, got rows={rows} with {method!r}")


def keyed_vectors(
    keys: Any,
    values: Any,
    *,
    seed: int = 0,
    duplicates: str = "mean",
    nan: str = "raise",
    name: str = "values",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-key (count, sum, sum of squares) vectors of a keyed column.

    Parameters
    ----------
    keys : array_like [n]
        Integer, string or datetime keys (see :func:`kernelsketch.sketch.hashing.hash_keys`).
    values : array_like [n]
        Real values (pandas Series work).
    seed : int
        Key-hashing seed (the sketcher's seed).
    duplicates : {"join", "mean", "sum"}
    nan : {"raise", "drop"}
    name : str
        Argument name used in error messages.

    Returns
    -------
    hashes : uint64 [k]  distinct key hashes
    count, total, squares : float64 [k]
    """
    check_choice("duplicates", duplicates, DUPLICATES)
    check_choice("nan", nan, NAN_POLICIES)
    hashes = hash_keys(keys, seed)
    x = _values(name, values, hashes.size)
    missing = np.isnan(x)
    if missing.any():
        if nan == "raise":
            raise ValueError(
                f"{name} must not contain NaN, found {int(missing.sum())}; pass nan='drop' to "
                "drop those rows"
            )
        hashes, x = hashes[~missing], x[~missing]
    uniq, inverse = np.unique(hashes, return_inverse=True)
    count = np.bincount(inverse, minlength=uniq.size).astype(np.float64)
    total = np.bincount(inverse, weights=x, minlength=uniq.size)
    if duplicates == "join":
        squares = np.bincount(inverse, weights=x**2, minlength=uniq.size)
        return uniq, count, total, squares
    per_key = total / count if duplicates == "mean" else total
    return uniq, np.ones(uniq.size), per_key, per_key**2


def sketch_column(
    keys: Any,
    values: Any,
    *,
    size: int,
    method: str = "ts",
    seed: int = 0,
    duplicates: str = "mean",
    nan: str = "raise",
    rows: int = 1,
) -> ColumnSketch:
    """Sketch a keyed numeric column for join estimation.

    Parameters
    ----------
    keys, values : array_like [n]
        The join key and the numeric column (see :func:`keyed_vectors`).
    size : int
        Storage budget in 64-bit words (15 to ``MAX_SIZE``). ``"ts"`` / ``"ps"``: one joint
        sample of the keys (:mod:`.joint`): 4 scalars plus 2 words per sampled
        key (4 with ``duplicates="join"``). Other methods: three sketches of
        ``size // 3`` words (see :class:`~kernelsketch.inner.Sketcher`).
    method : {"wmh", "jl", "cs", "mh", "ts", "ps"}, default "ts"
    seed : int, default 0
        Columns are comparable only when sketched with the same seed, method and size.
    duplicates : {"mean", "join", "sum"}, default "mean"
    nan : {"raise", "drop"}, default "raise"
    rows : int, default 1
        CountSketch rows (``method="cs"`` only).

    Returns
    -------
    ColumnSketch
    """
    check_options(method, size, rows)
    vectors = keyed_vectors(keys, values, seed=seed, duplicates=duplicates, nan=nan)
    return sketch_keyed_vectors(
        vectors, size=size, method=method, seed=seed, duplicates=duplicates, rows=rows
    )


def sketch_keyed_vectors(
    vectors: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    *,
    size: int,
    method: str,
    seed: int,
    duplicates: str,
    rows: int = 1,
    norms: tuple[float, float, float] | None = None,
) -> ColumnSketch:
    """Sketch the output of :func:`keyed_vectors` (hashed with the same ``seed``).

    ``norms``: of the whole column's count, sum and square vectors when these
    vectors are one key-disjoint part of it (for merging parts).
    """
    hashes, *parts = vectors
    if method in ("ts", "ps"):
        sample = joint_sample(
            hashes,
            tuple(parts),
            method=method,
            size=size,
            seed=seed,
            duplicates=duplicates,
            norms=norms,
        )
        return ColumnSketch((sample,), duplicates)
    sketcher = Sketcher(method, size // 3, seed, rows=rows)
    norms = norms or (None, None, None)
    return ColumnSketch(
        tuple(sketcher.sketch_hashed(hashes, v, norm=n) for v, n in zip(parts, norms)), duplicates
    )


def join_statistics(a: ColumnSketch, b: ColumnSketch) -> JoinStatistics:
    """Estimate the statistics of the join of two sketched columns (docs/inner_products.md)."""
    _check_pair(a, b)
    if len(a.sketches) == 1:
        return JoinStatistics(*a.sketches[0].join_sums(b.sketches[0]))
    (ca, sa, qa), (cb, sb, qb) = a.sketches, b.sketches
    return JoinStatistics(
        size=ca.inner_product(cb),
        sum_a=sa.inner_product(cb),
        sum_b=ca.inner_product(sb),
        sum_sq_a=qa.inner_product(cb),
        sum_sq_b=ca.inner_product(qb),
        sum_ab=sa.inner_product(sb),
    )


def exact_join_statistics(
    keys_a: Any,
    values_a: Any,
    keys_b: Any,
    values_b: Any,
    *,
    duplicates: str = "mean",
    nan: str = "raise",
) -> JoinStatistics:
    """Exact statistics of the join (the reference for the estimates), in O(n log n)."""
    ha, ca, sa, qa = keyed_vectors(
        keys_a, values_a, duplicates=duplicates, nan=nan, name="values_a"
    )
    hb, cb, sb, qb = keyed_vectors(
        keys_b, values_b, duplicates=duplicates, nan=nan, name="values_b"
    )
    _, ia, ib = np.intersect1d(ha, hb, assume_unique=True, return_indices=True)
    ca, sa, qa, cb, sb, qb = ca[ia], sa[ia], qa[ia], cb[ib], sb[ib], qb[ib]
    return JoinStatistics(
        size=float(ca @ cb),
        sum_a=float(sa @ cb),
        sum_b=float(ca @ sb),
        sum_sq_a=float(qa @ cb),
        sum_sq_b=float(ca @ qb),
        sum_ab=float(sa @ sb),
    )


def estimate_join(
    keys_a: Any,
    values_a: Any,
    keys_b: Any,
    values_b: Any,
    *,
    size: int,
    method: str = "ts",
    seed: int = 0,
    duplicates: str = "mean",
    nan: str = "raise",
    rows: int = 1,
) -> JoinStatistics:
    """Sketch both columns (``size`` words each) and estimate their join statistics."""
    kw = {
        "size": size,
        "method": method,
        "seed": seed,
        "duplicates": duplicates,
        "nan": nan,
        "rows": rows,
    }
    return join_statistics(
        sketch_column(keys_a, values_a, **kw), sketch_column(keys_b, values_b, **kw)
    )


def join_correlation(
    keys_a: Any,
    values_a: Any,
    keys_b: Any,
    values_b: Any,
    *,
    size: int,
    method: str = "ts",
    seed: int = 0,
    duplicates: str = "mean",
    nan: str = "raise",
    rows: int = 1,
) -> float:
    """Estimate the Pearson correlation of two keyed columns after their inner join.

    Parameters
    ----------
    keys_a, values_a : array_like [n_a]
        Table A's join key and numeric column (arrays or pandas Series).
    keys_b, values_b : array_like [n_b]
        Table B's join key and numeric column.
    size : int
        Storage budget per column sketch, in 64-bit words.
    method, seed, duplicates, nan, rows
        See :func:`sketch_column`.

    Returns
    -------
    float
        The estimated correlation in [-1, 1], NaN when the estimated join is
        empty or has no variance.

    Examples
    --------
    >>> r = join_correlation(dates_a, price, dates_b, volume, size=600, method="ps")
    """
    # correlation is invariant to scaling a column: bring each into range exactly
    return estimate_join(
        keys_a,
        _power_of_two_rescaled(values_a),
        keys_b,
        _power_of_two_rescaled(values_b),
        size=size,
        method=method,
        seed=seed,
        duplicates=duplicates,
        nan=nan,
        rows=rows,
    ).correlation


def _power_of_two_rescaled(values: Any) -> Any:
    """Real values scaled by a power of two (exactly) so the largest magnitude is in [1/2, 1);
    anything else is returned as is, for :func:`keyed_vectors` to reject."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "iuf" or arr.ndim != 1 or arr.size == 0:
        return values
    arr = arr.astype(np.float64)
    magnitudes = np.abs(arr[np.isfinite(arr)])
    top = float(magnitudes.max()) if magnitudes.size else 0.0
    if top == 0.0:
        return arr
    return np.ldexp(arr, -int(np.frexp(top)[1]))


def join_size(
    keys_a: Any,
    keys_b: Any,
    *,
    size: int,
    method: str = "ts",
    seed: int = 0,
    rows: int = 1,
) -> float:
    """Estimate the number of rows of the inner join of two key columns (duplicates pair up).

    ``size`` words go to one sketch of each side's per-key count vector; the
    estimate is ``<c_A, c_B>``.
    """
    check_choice("method", method, METHODS)
    sketcher = Sketcher(method, size, seed, rows=rows)
    sketches = []
    for keys in (keys_a, keys_b):
        hashes = hash_keys(keys, sketcher.seed)
        uniq, count = np.unique(hashes, return_counts=True)
        sketches.append(sketcher.sketch_hashed(uniq, count.astype(np.float64)))
    return sketches[0].inner_product(sketches[1])
