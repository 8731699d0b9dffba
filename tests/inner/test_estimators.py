"""Statistical tests of the inner-product estimators against exact float64 inner products.

Inputs are random; statistical tests fix their generator seeds (and the
sketch seeds) so they are deterministic, with margins of >= 4.5 standard errors.
"""

import numpy as np
import pytest

from kernelsketch.inner import METHODS, Sketcher


def _estimates(a, b, method, size, seeds, **kw):
    out = []
    for s in seeds:
        sk = Sketcher(method, size, s, **kw)
        out.append(sk.sketch(a).inner_product(sk.sketch(b)))
    return np.array(out)


def _rms_error(a, b, method, size, seeds, **kw):
    err = (_estimates(a, b, method, size, seeds, **kw) - a @ b) / (
        np.linalg.norm(a) * np.linalg.norm(b)
    )
    return float(np.sqrt(np.mean(err**2)))


@pytest.mark.parametrize("method", ["jl", "cs", "ts", "ps"])
def test_unbiased_mean_over_seeds(method, pair):
    a, b = pair(np.random.default_rng(7), 300, 120, 0.5)
    est = _estimates(a, b, method, 41, range(400))
    se = est.std(ddof=1) / np.sqrt(est.size)
    assert abs(est.mean() - a @ b) < 4.5 * se


@pytest.mark.parametrize("method", ["mh", "wmh"])
def test_minhash_estimators_unbiased(method, pair):
    # Unbiased, not only consistent: the union estimate (m - 1)/Σ min is independent of
    # the sampled keys (exponential race), E[(m - 1)/Gamma(m, U)] = U. No slack beyond
    # 5 standard errors (t with 199 df: tail < 1e-6); test_estimator_bias.py sees 2-3% biases.
    a, b = pair(np.random.default_rng(8), 300, 120, 0.5)
    est = _estimates(a, b, method, 201, range(200))
    se = est.std(ddof=1) / np.sqrt(est.size)
    assert abs(est.mean() - a @ b) < 5.0 * se


def test_countsketch_median_of_rows_shrinks_the_tail(pair):
    # rows of equal width: the median of 5 rows fails (|err| > t) far less often than 1 row
    a, b = pair(np.random.default_rng(9), 1000, 400, 0.3)
    scale = np.linalg.norm(a) * np.linalg.norm(b)
    one = np.abs(_estimates(a, b, "cs", 100, range(200), rows=1) - a @ b) / scale
    five = np.abs(_estimates(a, b, "cs", 500, range(200), rows=5) - a @ b) / scale
    t = 1.5 * np.sqrt(np.mean(one**2))
    assert np.mean(one > t) > 0.05
    assert np.mean(five > t) < 0.5 * np.mean(one > t)


def test_weighted_minhash_matches_at_weighted_jaccard_rate():
    rng = np.random.default_rng(10)
    a = rng.normal(size=60) * (rng.random(60) < 0.7)
    b = rng.normal(size=60) * (rng.random(60) < 0.7)
    b[:15] = 2 * a[:15] + 0.1 * rng.normal(size=15)
    wa, wb = a**2 / (a @ a), b**2 / (b @ b)
    jaccard = np.minimum(wa, wb).sum() / np.maximum(wa, wb).sum()
    union = np.maximum(wa, wb).sum()
    matches, minima = [], []
    for s in range(20):
        sk = Sketcher("wmh", 1001, s)
        ha, hb = sk.sketch(a).hash_values, sk.sketch(b).hash_values
        matches.append(ha == hb)
        minima.append(np.minimum(ha, hb))
    matches, minima = np.concatenate(matches), np.concatenate(minima)
    # consistent weighted sampling: P(match) = weighted Jaccard, min hash ~ Exp(union)
    assert abs(matches.mean() - jaccard) < 4.5 * np.sqrt(jaccard * (1 - jaccard) / matches.size)
    assert abs(minima.mean() - 1 / union) < 4.5 / union / np.sqrt(minima.size)


def test_weighted_minhash_samples_proportional_to_squared_entries():
    rng = np.random.default_rng(11)
    a = rng.normal(size=12)
    sk = Sketcher("wmh", 8001, 3).sketch(a)
    position = {v: i for i, v in enumerate(a)}
    m = sk.sample_values.size
    freq = np.bincount([position[v] for v in sk.sample_values], minlength=12) / m
    expected = a**2 / (a @ a)
    assert np.all(np.abs(freq - expected) < 4.5 * np.sqrt(expected * (1 - expected) / m))


@pytest.mark.parametrize("method", METHODS)
def test_error_falls_as_size_grows(method, pair):
    a, b = pair(np.random.default_rng(12), 1000, 250, 0.5)
    small = _rms_error(a, b, method, 41, range(24))
    large = _rms_error(a, b, method, 641, range(24))
    # theory: error ~ 1/sqrt(size), a factor ~4 here (sampling sketches become exact)
    assert large < small / 2.5


def test_sampling_sketches_beat_linear_on_sparse_small_overlap(pair):
    # Bessa et al. (2023) Thm 2 regime: 1% overlap, so ||a_I|| ~ 0.1 ||a||.
    # Errors pooled over 3 input pairs x 15 sketch seeds (heavy-tailed for WMH).
    rng = np.random.default_rng(13)
    errors = {m: [] for m in METHODS}
    for _ in range(3):
        a, b = pair(rng, 3000, 1000, 0.01, outliers=0.0)
        scale = np.linalg.norm(a) * np.linalg.norm(b)
        for m in METHODS:
            errors[m].extend((_estimates(a, b, m, 201, range(15)) - a @ b) / scale)
    rms = {m: float(np.sqrt(np.mean(np.square(e)))) for m, e in errors.items()}
    linear = min(rms["jl"], rms["cs"])
    assert rms["wmh"] < 0.5 * linear, rms
    assert rms["ts"] < 0.35 * linear, rms
    assert rms["ps"] < 0.35 * linear, rms


def test_weighted_minhash_on_par_with_linear_on_dense():
    rng = np.random.default_rng(14)
    a = rng.normal(size=300)
    b = 0.5 * a + rng.normal(size=300)
    err = {m: _rms_error(a, b, m, 201, range(2000, 2040)) for m in ("wmh", "jl", "cs")}
    # same O(||a|| ||b|| / sqrt(size)) guarantee: equal up to a small constant factor
    for linear in ("jl", "cs"):
        assert 0.4 < err["wmh"] / err[linear] < 2.5, err


@pytest.mark.parametrize("method", ["ts", "ps"])
def test_exact_when_sketch_holds_everything(method, pair, np_rng):
    a, b = pair(np_rng, 500, 100, 0.4)
    sk = Sketcher(method, 2 * 100 + 1, np_rng.integers(2**63))
    assert sk.sketch(a).inner_product(sk.sketch(b)) == pytest.approx(a @ b, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_zero_vector_gives_zero(method, np_rng):
    a = np_rng.normal(size=50)
    sk = Sketcher(method, 21, 1)
    assert sk.sketch(np.zeros(50)).inner_product(sk.sketch(a)) == 0.0
    assert sk.sketch(np.zeros(50)).inner_product(sk.sketch(np.zeros(50))) == 0.0


@pytest.mark.parametrize("method", ["mh", "wmh", "ts", "ps"])
def test_disjoint_supports_give_zero(method, np_rng):
    rng = np_rng
    a, b = np.zeros(100), np.zeros(100)
    a[:50], b[50:] = rng.normal(size=50), rng.normal(size=50)
    sk = Sketcher(method, 31, 5)
    assert sk.sketch(a).inner_product(sk.sketch(b)) == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_scaling_one_vector_scales_the_estimate(method, np_rng):
    rng = np_rng
    a, b = rng.normal(size=80), rng.normal(size=80)
    sk = Sketcher(method, 41, 3)
    base = sk.sketch(a).inner_product(sk.sketch(b))
    assert sk.sketch(-3.0 * a).inner_product(sk.sketch(b)) == pytest.approx(-3.0 * base, rel=1e-9)
