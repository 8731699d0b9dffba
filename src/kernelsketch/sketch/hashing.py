"""Seeded, vectorised 64-bit hashing of integer and string keys (numpy).

Coordinated sketches need the same pseudo-random numbers for the same key in
independently built sketches: every function here is a pure function of
(seed, key, stream), vectorised over numpy arrays, built on the SplitMix64
finalizer (a bijection on 64-bit words with full avalanche). ``seed`` names the
hash function (an int in ``[0, 2**64)``), not a random stream. Theory and key
kinds: docs/sketches.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "hash_keys",
    "hash_streams",
    "mix64",
    "seed_to_uint64",
    "to_bucket",
    "to_sign",
    "to_unit",
    "to_unit_pair",
]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_INT_TAG = np.uint64(0x1D8E4E27C47D124F)
_STR_TAG = np.uint64(0x2545F4914F6CDD1D)
_STREAM_TAG = np.uint64(0x5851F42D4C957F2D)
_U64_MAX = (1 << 64) - 1


def seed_to_uint64(seed: Any) -> np.uint64:
    """Validate a seed (a Python/numpy integer in [0, 2**64)) and return it as uint64."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    seed = int(seed)
    if not 0 <= seed <= _U64_MAX:
        raise ValueError(f"seed must be in [0, 2**64 - 1], got {seed}")
    return np.uint64(seed)


def mix64(x: Any) -> np.ndarray:
    """SplitMix64 finalizer, element-wise on a uint64 array (wrapping arithmetic).

    Parameters
    ----------
    x : array_like of uint64, any shape.

    Returns
    -------
    np.ndarray of uint64, same shape: a bijective, avalanching scramble of ``x``.
    """
    z = _mix_inplace(np.array(x, dtype=np.uint64, copy=True, ndmin=1))
    return z if np.ndim(x) else z.reshape(())


def _mix_inplace(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def _int_keys(keys: np.ndarray, seed: np.uint64) -> np.ndarray:
    if keys.dtype.kind == "u":
        bits = keys.astype(np.uint64)
    else:
        bits = keys.astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        return mix64(bits ^ mix64(seed ^ _INT_TAG))


def _str_keys(keys: np.ndarray, seed: np.uint64) -> np.ndarray:
    n = keys.shape[0]
    width = keys.dtype.itemsize // 4  # code points per fixed-width slot
    lengths = np.char.str_len(keys).astype(np.int64)
    codes = np.ascontiguousarray(keys).view(np.uint32).reshape(n, width)
    if width % 2:
        codes = np.concatenate([codes, np.zeros((n, 1), np.uint32)], axis=1)
    # two code points per 64-bit word; positions past a string's length are
    # skipped so the hash does not depend on the array's padding width.
    words = codes[:, 0::2].astype(np.uint64) | (codes[:, 1::2].astype(np.uint64) << np.uint64(32))
    h = np.full(n, mix64(seed ^ _STR_TAG), dtype=np.uint64)
    for w in range(words.shape[1]):
        live = 2 * w < lengths
        if not live.any():
            break
        h = np.where(live, mix64(h ^ words[:, w]), h)
    return mix64(h ^ lengths.astype(np.uint64))


def hash_keys(keys: Any, seed: Any = 0) -> np.ndarray:
    """Hash a 1-D collection of keys to uint64, seeded.

    Parameters
    ----------
    keys : array_like, shape [n]
        Integers (any numpy integer dtype, Python ints in ``[-2**63, 2**64)``;
        hashed from their two's-complement 64-bit pattern, so ``-1`` and
        ``2**64 - 1`` are the same key), strings (from their code points and
        length, independently of the array's width), ``datetime64`` /
        ``timedelta64`` (their int64 ticks), or objects (hashed by ``str``). A
        pandas Series/Index works (its values are used). Floating-point keys are
        rejected (equal-looking floats are rarely equal bit patterns).
    seed : int in [0, 2**64)
        Equal (seed, key) pairs give equal hashes in any array, any process.

    Returns
    -------
    np.ndarray of uint64, shape [n].

    Raises
    ------
    TypeError if the keys are floating point, complex or boolean.
    ValueError if ``keys`` is not one-dimensional or an integer key is outside
    ``[-2**63, 2**64)``.
    """
    s = seed_to_uint64(seed)
    arr = np.asarray(keys)
    if arr.dtype.kind == "f" and not isinstance(keys, np.ndarray) and arr.ndim == 1:
        # a list mixing negative ints and ints >= 2**63 becomes float64 in numpy
        as_objects = np.empty(len(arr), dtype=object)
        as_objects[:] = list(keys)
        if all(_is_int(k) for k in as_objects):
            arr = as_objects
    if arr.ndim != 1:
        raise ValueError(f"keys must be one-dimensional, got shape {list(arr.shape)}")
    kind = arr.dtype.kind
    if kind in "iu":
        return _int_keys(arr, s)
    if kind in "mM":
        return _int_keys(arr.view(np.int64), s)
    if kind == "U":
        return _str_keys(arr, s)
    if kind == "S":
        return _str_keys(arr.astype(np.str_), s)
    if kind == "O":
        if arr.size and all(_is_int(k) for k in arr):
            ints = [int(k) for k in arr]
            low, high = min(ints), max(ints)
            if low < -(2**63) or high > _U64_MAX:
                bad = low if low < -(2**63) else high
                raise ValueError(
                    f"keys must be integers in [-2**63, 2**64) (64-bit patterns), got {bad}"
                )
            # two's-complement 64-bit patterns, as for int64 / uint64 arrays
            return _int_keys(np.array([k & _U64_MAX for k in ints], dtype=np.uint64), s)
        return _str_keys(np.array([str(k) for k in arr], dtype=np.str_), s)
    raise TypeError(f"keys must be integers, strings or datetimes, got dtype {arr.dtype}")


def _is_int(k: Any) -> bool:
    return isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))


def hash_streams(hashes: Any, streams: Any) -> np.ndarray:
    """Derive independent pseudo-random words for (key, stream) pairs.

    Parameters
    ----------
    hashes : uint64 array, e.g. shape [n] (the output of :func:`hash_keys`).
    streams : integer array broadcastable against ``hashes``, e.g. shape [m, 1]
        for m independent hash functions.

    Returns
    -------
    np.ndarray of uint64 with the broadcast shape, e.g. [m, n].
    """
    st = np.asarray(streams).astype(np.uint64)
    with np.errstate(over="ignore"):
        salt = mix64(st * _GOLDEN + _STREAM_TAG)
    return _mix_inplace(np.bitwise_xor(np.asarray(hashes, dtype=np.uint64), salt))


def to_unit(h: Any) -> np.ndarray:
    """Map uint64 words to float64 uniforms strictly inside (0, 1) (52 bits + 1/2)."""
    h = np.asarray(h, dtype=np.uint64)
    # 52 bits: with 53, the top value + 1/2 would round up to exactly 1.0
    return ((h >> np.uint64(12)).astype(np.float64) + 0.5) * 2.0**-52


def to_unit_pair(h: Any) -> tuple[np.ndarray, np.ndarray]:
    """Split each uint64 word into two float64 uniforms in (0, 1) of 32 bits each.

    Half the hashing work where 32-bit resolution is enough (e.g. Gamma variates).
    """
    h = np.asarray(h, dtype=np.uint64)
    hi = (h >> np.uint64(32)).astype(np.float64)
    lo = (h & np.uint64(0xFFFFFFFF)).astype(np.float64)
    return (hi + 0.5) * 2.0**-32, (lo + 0.5) * 2.0**-32


def to_sign(h: Any) -> np.ndarray:
    """Map uint64 words to Rademacher signs (+1.0 / -1.0) from the top bit."""
    h = np.asarray(h, dtype=np.uint64)
    return 1.0 - 2.0 * (h >> np.uint64(63)).astype(np.float64)


def to_bucket(h: Any, n: int) -> np.ndarray:
    """Map uint64 words to buckets in [0, n) (int64); bias below n / 2**64."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    h = np.asarray(h, dtype=np.uint64)
    return (h % np.uint64(n)).astype(np.int64)
