"""Behaviour of the inner-product sketches that mutants surviving tools/mutation.py showed
untested (issue 22). Each test names the mutant it kills (checked against the mutant)."""

import warnings

import numpy as np
import pytest

from kernelsketch.inner import Sketcher, estimate_join, exact_join_statistics, sketch_column
from kernelsketch.inner.join import keyed_vectors
from kernelsketch.sketch.hashing import hash_keys, to_unit


def test_jl_sketch_of_many_keys_is_the_sum_of_its_blocks(seed):
    """jl_sketch hashes the keys in blocks of 2**22 / size; the projection of a vector with
    more keys than one block is the sum over all blocks (``y = ...`` for ``y += ...`` kept
    only the last block: every JL test used fewer keys than a block). Reference: the sketch
    is linear, so it equals the merge of the sketches of parts smaller than a block."""
    rng = np.random.default_rng(seed)
    size = 4096  # blocks of 1024 keys
    keys = rng.choice(10**9, size=2500, replace=False)
    values = rng.normal(size=keys.size)
    sk = Sketcher("jl", size, seed)
    whole = sk.sketch((keys, values))
    parts = [sk.sketch((keys[i:i + 500], values[i:i + 500])) for i in range(0, keys.size, 500)]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    np.testing.assert_allclose(whole.projection, merged.projection, rtol=1e-12, atol=1e-12)
    # and ||S a||^2 estimates ||a||^2 within 8 of its standard deviations sqrt(2/m) ||a||^2
    assert abs(whole.inner_product(whole) / (values @ values) - 1) < 8 * np.sqrt(2 / size)


def test_priority_merge_of_parts_that_fill_the_sample_exactly(seed):
    """Two priority sketches whose disjoint supports hold m keys in all: the merge keeps
    every key, and the inner product is exact (``keep.sum() >= m`` indexed past the end)."""
    rng = np.random.default_rng(seed)
    size = 41  # m = 20 samples
    m = (size - 1) // 2
    keys = rng.choice(10**6, size=m, replace=False)
    a, b = rng.normal(size=m), rng.normal(size=m)
    sk = Sketcher("ps", size, seed)
    cut = 7
    sa = sk.sketch((keys[:cut], a[:cut])).merge(sk.sketch((keys[cut:], a[cut:])))
    sb = sk.sketch((keys, b))
    assert sa.keys.size == m and np.isinf(sa.log_tau)
    assert sa.inner_product(sb) == pytest.approx(float(a @ b), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("method", ["ts", "ps"])
def test_merging_sketches_that_share_their_one_key_is_refused(method, seed):
    """Sampling sketches merge only disjoint supports; two one-key sketches of the same key
    are refused (``keys.size > 2`` let two duplicate keys through)."""
    sk = Sketcher(method, 21, seed)
    one = sk.sketch(([12345], [2.0]), norm=2.0) if method == "ts" else sk.sketch(([12345], [2.0]))
    with pytest.raises(ValueError, match="other shares sampled keys"):
        one.merge(one)


def test_threshold_sketch_of_a_part_uses_the_given_norm(seed):
    """A part sketched with ``norm=`` (the whole vector's) keeps key i with probability
    min(1, m a_i^2 / norm^2), the scale every part shares so that parts merge (Daliri et al.,
    Algorithm 1 with a fixed budget); ``2.0 / log(norm)`` for ``2.0 * log(norm)`` survived."""
    rng = np.random.default_rng(seed)
    size = 61
    m = (size - 1) // 2
    keys = rng.choice(10**6, size=400, replace=False)
    values = rng.normal(size=keys.size) * rng.choice([1e-3, 1.0, 30.0], size=keys.size)
    whole = float(np.sqrt(values @ values))
    part = slice(0, 150)
    sk = Sketcher("ts", size, seed).sketch((keys[part], values[part]), norm=whole)
    assert sk.scale == pytest.approx(m / whole**2, rel=1e-12)
    kept = sk.sample_values
    assert kept.size > 0
    np.testing.assert_allclose(sk.probabilities(), np.minimum(1.0, m * kept**2 / whole**2),
                               rtol=1e-12)


# -- inner/join.py ---------------------------------------------------------------------------


def _column(rng, n, n_keys):
    return rng.integers(0, n_keys, size=n), rng.normal(size=n)


def test_join_defaults_are_the_documented_ones(seed):
    """keyed_vectors averages duplicate keys by default and estimate_join hashes with seed 0,
    like sketch_column (a default of 'XXmeanXX' or seed 1 passed test_join.py, which always
    passes them)."""
    rng = np.random.default_rng(seed)
    ka, va = _column(rng, 300, 120)
    kb, vb = _column(rng, 200, 120)
    default = keyed_vectors(ka, va)
    mean = keyed_vectors(ka, va, duplicates="mean")
    for x, y in zip(default, mean):
        np.testing.assert_array_equal(x, y)
    assert estimate_join(ka, va, kb, vb, size=64) == estimate_join(ka, va, kb, vb, size=64, seed=0)


def test_join_of_a_column_whose_values_are_all_dropped(seed):
    """An all-NaN column with nan='drop' is an empty column: join size 0, no warning (the
    largest magnitude of an all-NaN or empty column is 0, not np.nanmax's NaN)."""
    rng = np.random.default_rng(seed)
    ka, _ = _column(rng, 50, 20)
    kb, vb = _column(rng, 60, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = exact_join_statistics(ka, np.full(ka.size, np.nan), kb, vb, nan="drop")
        empty = keyed_vectors(np.array([], dtype=np.int64), np.array([]))
    assert stats.size == 0.0 and stats.sum_ab == 0.0
    assert all(x.size == 0 for x in empty)


def _joint_weights_f64(keys, values, seed, duplicates):
    """Distinct key hashes and the documented joint-sample weights
    w_i = max(c_i^2/||c||^2, s_i^2/||s||^2, q_i^2/||q||^2), in float64 from a per-row loop."""
    groups: dict[int, list[float]] = {}
    for h, x in zip(hash_keys(keys, seed).tolist(), values.tolist()):
        groups.setdefault(h, []).append(x)
    hashes = np.array(sorted(groups), dtype=np.uint64)
    rows = []
    for h in hashes.tolist():
        xs = groups[h]
        if duplicates == "join":
            rows.append((len(xs), sum(xs), sum(x * x for x in xs)))
        else:
            m = sum(xs) / len(xs)
            rows.append((1.0, m, m * m))
    cst = np.array(rows, dtype=np.float64)  # [k, 3]: count, sum, squares
    w = (cst**2 / (cst**2).sum(axis=0)).max(axis=1)
    return hashes, w


@pytest.mark.parametrize("duplicates", ["join", "mean"])
@pytest.mark.parametrize("method", ["ts", "ps"])
def test_joint_sample_inclusion_probabilities_entry_by_entry(method, duplicates, seed):
    """The joint sample keeps key i with probability min(1, scale * w_i), w_i the largest
    normalised *squared* entry (Daliri et al. §5), checked key by key against a float64
    recomputation: the weights it reports, its inclusion probabilities, the kept set (the
    coordinated rule u_i <= scale * w_i, resp. the m smallest u_i / w_i) and, for threshold
    sampling, the adaptive scale (sum_i min(1, c w_i) = m). Threshold and priority sampling
    stay unbiased for any weights, so the join-sum tests cannot see `(v / n) ** 3`."""
    rng = np.random.default_rng(seed)
    n_keys = 400
    keys = rng.integers(0, n_keys, size=900)
    values = rng.standard_t(3, size=keys.size) + 0.5  # heavy tails: weights far from uniform
    size = 4 + 60 * (4 if duplicates == "join" else 2)  # 60 sampled keys of ~360 distinct
    m = 60
    sample = sketch_column(keys, values, size=size, method=method, seed=seed % 2**31,
                           duplicates=duplicates).sketches[0]
    hashes, w = _joint_weights_f64(keys, values, seed % 2**31, duplicates)
    assert hashes.size > 2 * m and w.max() > 3 * np.median(w)
    at = np.searchsorted(hashes, sample.keys)
    np.testing.assert_array_equal(hashes[at], sample.keys)
    np.testing.assert_allclose(sample.weights(), w[at], rtol=1e-12, atol=0)
    u = to_unit(hashes)
    if method == "ts":
        lo, hi = 0.0, 1e6 / w.max()  # bisection for sum_i min(1, c w_i) = m
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if np.minimum(1.0, mid * w).sum() < m else (lo, mid)
        scale = 0.5 * (lo + hi)
        kept = np.flatnonzero(u <= np.minimum(1.0, scale * w))
    else:
        ranks = u / w
        order = np.argsort(ranks)
        kept = np.sort(order[:m])
        scale = ranks[order[m]]  # tau: the (m+1)-th smallest rank u_i / w_i
    np.testing.assert_array_equal(np.sort(at), kept)
    np.testing.assert_allclose(sample.probabilities(), np.minimum(1.0, scale * w[at]),
                               rtol=1e-9, atol=0)
