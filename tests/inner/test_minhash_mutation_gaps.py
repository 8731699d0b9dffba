"""Gaps a sampled mutation run (tools/mutation.py, inner.minhash, --sample 40 --sample-seed 22)
found in the MinHash tests (issue 22): each test fails on the mutant it names."""

import numpy as np
import pytest

from kernelsketch.inner import minhash
from kernelsketch.sketch.hashing import hash_keys


def _sketch(kind, hashes, values, size, seed):
    if kind == "minhash":
        return minhash.minhash_sketch(hashes, values, size=size, seed=seed)
    norm = float(np.linalg.norm(values))
    return minhash.weighted_minhash_sketch(hashes, values, size=size, seed=seed, norm=norm)


@pytest.mark.parametrize("kind", ["minhash", "weighted"])
def test_sketch_does_not_depend_on_scan_block_size(kind, seed, np_rng, monkeypatch):
    # _running_argmin scans the keys in blocks (a memory bound); the minima and the sampled
    # values must be those of one scan over all keys. Mutant: each block sliced from key 0
    # (slice(min(s + step, n)) for slice(s, ...)) offsets the arg of every later block.
    n, size = 300, 41
    values = np_rng.standard_normal(n)
    hashes = hash_keys(np.arange(n, dtype=np.int64), seed)
    one = _sketch(kind, hashes, values, size, seed)  # default block: one block for 300 keys
    m = one.hash_values.size
    monkeypatch.setattr(minhash, "_BLOCK_WORDS", 7 * m * 6)  # steps of 7 (or 42) keys
    many = _sketch(kind, hashes, values, size, seed)
    np.testing.assert_array_equal(many.hash_values, one.hash_values)
    np.testing.assert_array_equal(many.sample_values, one.sample_values)


@pytest.mark.parametrize("kind", ["minhash", "weighted"])
def test_hash_functions_draw_disjoint_streams(kind, seed, np_rng, monkeypatch):
    # The m hash functions must be independent: every random variate of hash function k
    # (ICWS: r, c and beta) comes from stream ids no other hash function uses. Mutants:
    # beta from base - 1 or base - 2 (hash function k reusing k-1's streams) pass every
    # mean/variance test at these sizes.
    seen = []
    real = minhash.hash_streams

    def recording(h, streams):
        seen.append(np.asarray(streams, dtype=np.uint64).reshape(-1).copy())
        return real(h, streams)

    monkeypatch.setattr(minhash, "hash_streams", recording)
    n, size = 20, 41
    values = np_rng.standard_normal(n)
    sk = _sketch(kind, hash_keys(np.arange(n, dtype=np.int64), seed), values, size, seed)
    m = sk.hash_values.size
    calls_per_block = 1 if kind == "minhash" else 3
    assert len(seen) == calls_per_block  # 20 keys: one block
    ids = np.concatenate(seen)
    assert ids.size == calls_per_block * m
    assert np.unique(ids).size == ids.size, "two variates share a hash stream"
