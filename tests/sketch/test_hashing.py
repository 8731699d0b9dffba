"""Tests for the seeded 64-bit key hashing primitives."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kernelsketch.sketch.hashing import (
    hash_keys,
    hash_streams,
    mix64,
    seed_to_uint64,
    to_bucket,
    to_sign,
    to_unit,
)


def test_mix64_is_a_bijection_on_a_sample(np_rng):
    x = np_rng.integers(0, 2**63, size=50_000, dtype=np.uint64)
    x = np.unique(x)
    assert np.unique(mix64(x)).size == x.size


def test_mix64_keeps_shape_and_scalars():
    assert mix64(np.zeros((2, 3), np.uint64)).shape == (2, 3)
    assert mix64(np.uint64(7)).shape == ()
    assert mix64(np.uint64(7)) != mix64(np.uint64(8))


def test_hash_is_deterministic_and_seeded(np_rng):
    keys = np_rng.integers(-(2**62), 2**62, size=1000)
    np.testing.assert_array_equal(hash_keys(keys, 5), hash_keys(keys.copy(), 5))
    # different seeds: essentially no equal words
    assert np.mean(hash_keys(keys, 5) == hash_keys(keys, 6)) < 0.01


def test_int_dtypes_and_python_ints_agree():
    k = np.array([0, 1, 5, 2**40], dtype=np.int64)
    expected = hash_keys(k, 3)
    np.testing.assert_array_equal(hash_keys(k.astype(np.uint64), 3), expected)
    np.testing.assert_array_equal(hash_keys(k.astype(np.int32)[:3], 3), expected[:3])
    np.testing.assert_array_equal(hash_keys([0, 1, 5, 2**40], 3), expected)
    np.testing.assert_array_equal(hash_keys(np.array([0, 1, 5, 2**40], dtype=object), 3), expected)


def test_full_uint64_range_keys():
    big = np.array([2**64 - 1, 2**63], dtype=np.uint64)
    h = hash_keys(big, 1)
    assert h.dtype == np.uint64 and h[0] != h[1]
    np.testing.assert_array_equal(hash_keys([2**64 - 1, 2**63], 1), h)
    # two's-complement patterns: -1 is 2**64 - 1, also in a list mixing signs (numpy would
    # make [-1, 2**63] a float64 array)
    np.testing.assert_array_equal(hash_keys([-1, 2**63], 1), h)


@pytest.mark.parametrize("key", [2**64, -(2**63) - 1, 10**30])
def test_integer_keys_beyond_64_bits_rejected(key):
    # keys of 2**64 overflowed with an OverflowError from numpy
    with pytest.raises(ValueError, match=r"keys must be integers in \[-2\*\*63, 2\*\*64\)"):
        hash_keys([1, key], 0)


def test_string_hash_independent_of_array_width():
    short = hash_keys(np.array(["ab", "c"]), 9)
    wide = hash_keys(np.array(["ab", "c", "a much longer string key"]), 9)
    np.testing.assert_array_equal(short, wide[:2])
    np.testing.assert_array_equal(hash_keys(["ab"], 9), hash_keys(np.array(["ab"], dtype="S"), 9))


def test_string_hash_distinguishes_near_strings():
    keys = ["a", "a ", " a", "ab", "ba", "", "é", "e", "aa", "a" * 3]
    assert np.unique(hash_keys(keys, 0)).size == len(keys)


def test_strings_are_collision_free_on_many_keys():
    keys = [f"user-{i}" for i in range(20_000)]
    assert np.unique(hash_keys(keys, 11)).size == len(keys)


def test_datetime_and_object_keys():
    dates = pd.date_range("2000-01-01", periods=10, freq="D")
    h = hash_keys(pd.Series(dates), 2)
    np.testing.assert_array_equal(h, hash_keys(dates.values.view(np.int64), 2))
    mixed = np.empty(2, dtype=object)
    mixed[:] = [("a", 1), ("b", 2)]
    np.testing.assert_array_equal(hash_keys(mixed, 2), hash_keys(["('a', 1)", "('b', 2)"], 2))


def test_float_keys_rejected():
    with pytest.raises(TypeError, match="keys must be integers, strings or datetimes"):
        hash_keys(np.array([1.0, 2.0]), 0)


def test_two_dimensional_keys_rejected():
    with pytest.raises(ValueError, match=r"keys must be one-dimensional, got shape \[2, 2\]"):
        hash_keys(np.zeros((2, 2), dtype=np.int64), 0)


def test_seed_must_be_int():
    with pytest.raises(TypeError, match="seed must be an int, got float"):
        seed_to_uint64(1.5)


def test_seed_must_be_in_range():
    with pytest.raises(ValueError, match="seed must be in"):
        seed_to_uint64(-1)
    with pytest.raises(ValueError, match="seed must be in"):
        seed_to_uint64(2**64)


def test_unit_values_uniform_in_open_interval():
    # deterministic statistical test: fixed keys and seed
    u = to_unit(hash_keys(np.arange(200_000), 12345))
    assert u.min() > 0.0 and u.max() < 1.0
    counts = np.histogram(u, bins=100, range=(0, 1))[0]
    assert stats.chisquare(counts).pvalue > 1e-4
    assert to_unit(np.array([0, 2**64 - 1], dtype=np.uint64)).tolist()[0] > 0.0
    assert to_unit(np.array([2**64 - 1], dtype=np.uint64))[0] < 1.0


def test_streams_are_independent():
    h = hash_keys(np.arange(100_000), 3)
    u = to_unit(hash_streams(h, np.arange(4, dtype=np.uint64)[:, None]))
    assert u.shape == (4, 100_000)
    corr = np.corrcoef(u)
    off = corr[~np.eye(4, dtype=bool)]
    assert np.abs(off).max() < 5 * 100_000**-0.5
    assert np.mean(u[0] == u[1]) == 0.0


def test_signs_balanced_and_buckets_in_range():
    h = hash_keys(np.arange(100_000), 8)
    s = to_sign(h)
    assert set(np.unique(s)) == {-1.0, 1.0}
    assert abs(s.mean()) < 5 * 100_000**-0.5
    b = to_bucket(h, 7)
    assert b.min() == 0 and b.max() == 6
    assert stats.chisquare(np.bincount(b)).pvalue > 1e-4


def test_bucket_count_must_be_positive():
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        to_bucket(np.zeros(3, np.uint64), 0)
