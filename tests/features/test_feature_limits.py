"""What the kernel feature maps promise beyond their oracles: PolynomialSketch's exact head
(exact when it fits, unbiased otherwise, far below TensorSketch on data with a dominant
direction), warnings in the regimes a map cannot serve, sizes that cannot fit refused before
allocating, overflow and bad input reported by name, and KernelRidge's sample_weight /
random_state / verbose."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.kernel_approximation import PolynomialCountSketch
from sklearn.metrics.pairwise import polynomial_kernel

from kernelsketch.features import (
    GegenbauerFeatures,
    KernelRidge,
    PolynomialLeverageSampler,
    PolynomialSketch,
    RLSNystroem,
    WeightedRandomBinning,
)


def _rel(Z, K):
    Z = Z.toarray() if sp.issparse(Z) else Z
    return np.linalg.norm(Z @ Z.T - K) / np.linalg.norm(K)


# --- PolynomialSketch: exact head + TensorSketch of the residual ---------------------------


def test_polysketch_exact_when_every_monomial_fits(np_rng):
    # d = 5 and coef0 > 0: (5 + 1 + 1) choose 2 = 21 monomials <= 32 features.
    X = np_rng.normal(size=(30, 5))
    est = PolynomialSketch(n_components=32, degree=2, gamma=0.3, coef0=1.0, random_state=0)
    Z = est.fit_transform(X)
    assert Z.shape == (30, 32) and est.n_exact_ == 21 and est.residual_ == 0.0
    np.testing.assert_allclose(Z @ Z.T, polynomial_kernel(X, degree=2, gamma=0.3, coef0=1.0),
                               rtol=1e-10, atol=1e-10)
    Xt = np_rng.normal(size=(7, 5))  # exact for new rows too
    np.testing.assert_allclose(est.transform(Xt) @ Z.T,
                               polynomial_kernel(Xt, X, degree=2, gamma=0.3, coef0=1.0),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n_exact", [0, 6])
def test_polysketch_head_plus_residual_unbiased(n_exact):
    # A forced head of 6 monomials + a 10-wide TensorSketch of the rest: the mean over
    # 200 independent draws is K within 5 standard errors per entry.
    X = np.random.default_rng(3).normal(size=(5, 4)) / 2
    K = polynomial_kernel(X, degree=3, gamma=1.0, coef0=0.5)
    grams = []
    for s in range(200):
        Z = PolynomialSketch(n_components=16, degree=3, coef0=0.5, n_exact=n_exact,
                             random_state=s).fit_transform(X)
        grams.append(Z @ Z.T)
    grams = np.stack(grams)
    se = grams.std(0) / np.sqrt(len(grams))
    assert np.all(np.abs(grams.mean(0) - K) <= 5 * se + 1e-12)


def test_polysketch_head_far_below_tensorsketch_on_positive_data(np_rng):
    # Positive data (like pixels) has one dominant direction; the head takes it exactly.
    # Ratio to PolynomialCountSketch measured over 40 seeds: median 0.058, max 0.127.
    X = np_rng.uniform(size=(150, 20))
    K = polynomial_kernel(X, degree=3, gamma=1 / 20, coef0=1.0)
    ours = _rel(PolynomialSketch(n_components=128, degree=3, gamma=1 / 20, coef0=1.0,
                                 random_state=0).fit_transform(X), K)
    theirs = _rel(PolynomialCountSketch(n_components=128, degree=3, gamma=1 / 20, coef0=1.0,
                                        random_state=0).fit_transform(X), K)
    assert ours < 0.4 * theirs


def test_polysketch_error_falls_with_n_components_beyond_the_head(np_rng):
    X = np_rng.normal(size=(80, 30))
    K = polynomial_kernel(X, degree=3, gamma=1 / 30, coef0=1.0)
    errs = [np.mean([_rel(PolynomialSketch(n_components=m, degree=3, gamma=1 / 30, coef0=1.0,
                                           random_state=s).fit_transform(X), K)
                     for s in range(3)]) for m in (64, 1024)]
    assert errs[1] < 0.5 * errs[0]


def test_polysketch_sparse_wide_input_matches_dense(np_rng):
    # 400 columns (> 256): the head is taken in the input coordinates, never densified.
    X = sp.random(40, 400, density=0.05, random_state=int(np_rng.integers(1 << 31)),
                  format="csr", data_rvs=np_rng.standard_normal)
    est = PolynomialSketch(n_components=64, degree=2, coef0=1.0, random_state=0).fit(X)
    np.testing.assert_allclose(est.transform(X), est.transform(X.toarray()), rtol=1e-9,
                               atol=1e-12)


def test_polysketch_warns_when_it_approximates_little(np_rng):
    X = np_rng.normal(size=(60, 16))
    with pytest.warns(UserWarning, match="expected relative Gram error"):
        PolynomialSketch(n_components=16, degree=6, coef0=1.0, random_state=0).fit(X)


# --- regimes a map cannot serve --------------------------------------------------------------


def test_binning_warns_in_high_dimension(np_rng):
    X = np_rng.normal(size=(20, 64))
    with pytest.warns(UserWarning, match=r"E\[f\^4\]\^64 - 1 .* projection_dim=2"):
        WeightedRandomBinning(n_components=100, random_state=0).fit(X)


def test_binning_laplacian_has_no_variance_warning(np_rng, recwarn):
    WeightedRandomBinning(kernel="laplacian", n_components=50, random_state=0).fit(
        np_rng.normal(size=(20, 64)))
    assert not [w for w in recwarn if "variance" in str(w.message)]


def test_binning_coordinates_warn_about_time_from_d_8(np_rng, recwarn):
    # Binning d >= 8 coordinates per grid cannot match RBFSampler's time: fit says so and
    # names projection_dim; d = 7 and projections fit silently.
    with pytest.warns(UserWarning, match="bins all 8 input coordinates .* projection_dim=1"):
        WeightedRandomBinning(kernel="laplacian", n_components=20, length_scale=3.0,
                              random_state=0).fit(np_rng.normal(size=(50, 8)))
    for d, p in ((7, None), (64, 1)):
        WeightedRandomBinning(kernel="laplacian", n_components=20, length_scale=3.0 * d,
                              projection_dim=p, random_state=0).fit(np_rng.normal(size=(50, d)))
    assert not [w for w in recwarn if "input coordinates" in str(w.message)]


# --- memory ----------------------------------------------------------------------------------


def test_sizes_that_cannot_fit_are_refused_before_allocating():
    X = np.ones((4, 3))
    with pytest.raises(ValueError, match="n_components must be <="):
        PolynomialSketch(n_components=10**9).fit(X)
    with pytest.raises(ValueError, match="n_components must be <="):
        GegenbauerFeatures(n_components=10**9).fit(X)
    with pytest.raises(ValueError, match="n_components must be <="):
        WeightedRandomBinning(n_components=10**9).fit(X)
    est = PolynomialSketch(n_components=10**6, random_state=0).fit(X)
    with pytest.raises(ValueError, match=r"output of PolynomialSketch.transform needs"):
        est.transform(np.ones((10**7, 3)))


# --- overflow and bad input ------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: PolynomialSketch(random_state=0),
    lambda: PolynomialLeverageSampler(n_components=20, random_state=0),
])
def test_float32_overflow_is_reported_not_returned(make, np_rng):
    X = (np_rng.normal(size=(20, 5)) * 1e20).astype(np.float32)
    with pytest.raises(ValueError, match="X's scale overflows the features in float32"):
        make().fit_transform(X)


def test_rls_nystroem_float32_huge_inputs_give_finite_features(np_rng):
    X = (np_rng.normal(size=(20, 5)) * 1e20).astype(np.float32)
    Z = RLSNystroem(n_components=10, random_state=0).fit_transform(X)
    assert Z.dtype == np.float32 and np.isfinite(Z).all()


@pytest.mark.parametrize("scale", [0.0, 1e100])
def test_leverage_sampler_zero_and_huge_inputs(scale, np_rng):
    X = np_rng.normal(size=(30, 4)) * scale
    est = PolynomialLeverageSampler(n_components=20, degree=3, coef0=0.0, random_state=0)
    Z = est.fit_transform(X)
    assert np.isfinite(Z).all()
    if scale == 0.0:
        assert not Z.any()


def test_gegenbauer_bad_coefficients_and_degree():
    X = np.ones((4, 3))
    with pytest.raises(ValueError, match="coefficients must be finite"):
        GegenbauerFeatures(coefficients=[np.nan]).fit(X)
    est = GegenbauerFeatures(degree=171, random_state=0).fit(X * 1e30)  # gaussian: no overflow
    assert np.isfinite(est.transform(X * 1e30)).all()
    with pytest.raises(ValueError, match="degree must keep the harmonic dimension finite"):
        GegenbauerFeatures(kernel="ntk", degree=900).fit(np.ones((4, 200)))


@pytest.mark.parametrize("make", [
    lambda: PolynomialSketch(n_components=8, random_state=0),
    lambda: PolynomialLeverageSampler(n_components=8, random_state=0),
    lambda: RLSNystroem(n_components=4, random_state=0),
    lambda: GegenbauerFeatures(n_components=8, random_state=0),
])
def test_feature_map_wrong_width_is_named(make, np_rng):
    est = make().fit(np_rng.normal(size=(10, 4)))
    with pytest.raises(ValueError, match="x must have 4 features"):
        est.feature_map_(torch.zeros(3, 7, dtype=torch.float64))


def test_binning_map_wrong_width_is_named(np_rng):
    est = WeightedRandomBinning(n_components=8, kernel="laplacian", random_state=0).fit(
        np_rng.normal(size=(10, 4)))
    with pytest.raises(ValueError, match="x must have 4 features"):
        est.feature_map_(torch.zeros(3, 7, dtype=torch.float64))


# --- KernelRidge -----------------------------------------------------------------------------


def test_kernel_ridge_integer_weights_equal_repeated_rows(np_rng):
    X, y = np_rng.normal(size=(40, 3)), np_rng.normal(size=40)
    w = np_rng.integers(1, 4, size=40)
    feats = PolynomialSketch(n_components=16, degree=2, coef0=1.0, random_state=0)
    a = KernelRidge(feats, alpha=0.5).fit(X, y, sample_weight=w)
    b = KernelRidge(feats, alpha=0.5).fit(np.repeat(X, w, axis=0), np.repeat(y, w))
    np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=1e-8, atol=1e-10)


def test_kernel_ridge_default_features_follow_random_state(np_rng):
    X, y = np_rng.normal(size=(60, 3)), np_rng.normal(size=60)
    a = KernelRidge(random_state=3).fit(X, y).predict(X)
    np.testing.assert_array_equal(a, KernelRidge(random_state=3).fit(X, y).predict(X))
    assert not np.array_equal(a, KernelRidge(random_state=4).fit(X, y).predict(X))


def test_kernel_ridge_bad_fit_intercept_device_and_weights(np_rng):
    X, y = np_rng.normal(size=(10, 3)), np_rng.normal(size=10)
    with pytest.raises(TypeError, match="fit_intercept must be a bool"):
        KernelRidge(fit_intercept="yes").fit(X, y)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no usable CUDA device"):
            KernelRidge(device="cuda").fit(X, y)
    with pytest.raises(ValueError, match="sample_weight must be finite and >= 0"):
        KernelRidge().fit(X, y, sample_weight=-np.ones(10))


def test_kernel_ridge_sparse_tag_follows_features():
    assert not KernelRidge().__sklearn_tags__().input_tags.sparse
    assert KernelRidge(PolynomialSketch()).__sklearn_tags__().input_tags.sparse


def test_kernel_ridge_verbose_reports_progress(np_rng, capsys):
    X, y = np_rng.normal(size=(30, 3)), np_rng.normal(size=30)
    KernelRidge(RLSNystroem(n_components=10, random_state=0), verbose=1).fit(X, y)
    err = capsys.readouterr().err
    assert "KernelRidge.fit" in err
