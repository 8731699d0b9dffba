import itertools
import math

import numpy as np
import pytest
import torch
from scipy.special import eval_gegenbauer
from sklearn.utils.estimator_checks import parametrize_with_checks

from kernelsketch.features.gegenbauer import (
    GegenbauerFeatures,
    gegenbauer,
    gegenbauer_coefficients,
    gegenbauer_features,
    gzk_kernel,
    harmonic_dimension,
    harmonic_space_dimension,
    monomial_to_gegenbauer,
    uniform_sphere,
    zonal_kernel,
)
from kernelsketch.features.ntk import ntk_relu

# Most tests compare the features with the truncated series itself (gzk_kernel), where
# the Taylor-truncation warning for large norms is irrelevant; it is tested on its own.
pytestmark = pytest.mark.filterwarnings("ignore:GegenbauerFeatures.kernel='gaussian'")


def _gaussian(X, Y, gamma):
    return np.exp(-gamma * ((X[:, None, :] - Y[None, :, :]) ** 2).sum(-1))


# --- Gegenbauer polynomials and harmonic dimensions -------------------------------------


@pytest.mark.parametrize("d", [2, 3, 4, 7, 20])
def test_gegenbauer_matches_scipy_normalised(d, np_rng):
    t = np_rng.uniform(-1, 1, size=50)
    P = gegenbauer(t, 9, d)
    for ell in range(10):
        if d == 2:
            ref = np.cos(ell * np.arccos(t))
        else:
            lam = d / 2 - 1
            ref = eval_gegenbauer(ell, lam, t) / eval_gegenbauer(ell, lam, 1.0)
        np.testing.assert_allclose(P[:, ell], ref, atol=1e-12)
    np.testing.assert_allclose(gegenbauer(np.ones(1), 9, d), 1.0, atol=1e-12)


def test_gegenbauer_torch_matches_numpy_and_keeps_shape(np_rng):
    t = np_rng.uniform(-1, 1, size=(3, 4))
    Pt = gegenbauer(torch.from_numpy(t), 6, 5)
    assert Pt.shape == (3, 4, 7) and Pt.dtype == torch.float64
    np.testing.assert_allclose(Pt.numpy(), gegenbauer(t, 6, 5), atol=1e-14)


@pytest.mark.parametrize("d", [2, 3, 5, 9])
def test_harmonic_dimensions(d):
    dims = [harmonic_dimension(ell, d) for ell in range(8)]
    if d == 2:
        assert dims == [1] + [2] * 7
    if d == 3:
        assert dims == [2 * ell + 1 for ell in range(8)]
    for q in range(8):
        assert harmonic_space_dimension(q, d) == sum(dims[: q + 1])


@pytest.mark.parametrize("d,q", [(3, 4), (4, 3), (6, 2)])
def test_zonal_kernel_has_rank_dim_of_harmonics(d, q):
    # The Gram matrix of the degree-<=q reproducing kernel at generic points has rank
    # dim H_{<=q}, and its diagonal is that dimension.
    dim = harmonic_space_dimension(q, d)
    X = uniform_sphere(dim + 15, d, random_state=10 * d + q)
    K = zonal_kernel(X, X, q)
    np.testing.assert_allclose(np.diag(K), dim, rtol=1e-12)
    eig = np.linalg.eigvalsh(K)
    assert int((eig > 1e-8 * eig.max()).sum()) == dim


def test_zonal_kernel_reproduces_harmonics():
    # E_w[K(x, w) f(w)] = f(x) for f in H_{<=q}: check with an exact quadrature-free
    # identity, K * K = K in L2(sigma), by Monte Carlo with a bound.
    d, q, n = 3, 2, 40000
    W = uniform_sphere(n, d, random_state=3)
    X = uniform_sphere(4, d, random_state=4)
    KxW = zonal_kernel(X, W, q)
    est = KxW @ KxW.T / n
    se = np.sqrt(np.var(KxW[:, None, :] * KxW[None, :, :], axis=-1) / n)
    assert np.all(np.abs(est - zonal_kernel(X, X, q)) < 6 * se + 1e-9)


def test_monomials_in_gegenbauer_basis(np_rng):
    d = int(np_rng.integers(2, 12))
    B = monomial_to_gegenbauer(9, d)
    t = np_rng.uniform(-1, 1, size=30)
    np.testing.assert_allclose(gegenbauer(t, 9, d) @ B.T, t[:, None] ** np.arange(10), atol=1e-12)
    assert np.all(B >= 0)
    np.testing.assert_allclose(B.sum(1), 1.0)


def test_gegenbauer_coefficients_exact_for_polynomials_and_nonnegative_for_exp(np_rng):
    d = int(np_rng.integers(2, 10))
    c = np_rng.standard_normal(6)
    poly = np.polynomial.Polynomial(c)
    coef = gegenbauer_coefficients(poly, 5, d)
    np.testing.assert_allclose(coef, c @ monomial_to_gegenbauer(5, d), atol=1e-10)
    assert np.all(gegenbauer_coefficients(np.exp, 12, d) > 0)


# --- exact GZK series --------------------------------------------------------------------


def test_gaussian_series_converges_to_gaussian_kernel(np_rng):
    # Truncating the Taylor series of exp(2γ<x,y>) at degree q leaves at most
    # e^{-γ(|x|²+|y|²)} Σ_{j>q} (2γ|x||y|)^j / j! (entrywise).
    X = np_rng.standard_normal((20, 4)) * 0.5
    gamma = 0.7
    K = _gaussian(X, X, gamma)
    r = np.linalg.norm(X, axis=1)
    rho = 2 * gamma * np.outer(r, r)
    damp = np.exp(-gamma * (r[:, None] ** 2 + r[None, :] ** 2))
    errs = []
    for q in (2, 6, 12, 20):
        err = np.abs(gzk_kernel(X, kernel="gaussian", degree=q, gamma=gamma) - K)
        tail = damp * sum(rho**j / math.factorial(j) for j in range(q + 1, q + 60))
        assert np.all(err <= tail * (1 + 1e-6) + 1e-13)
        errs.append(err.max())
    assert all(b < a for a, b in itertools.pairwise(errs))


def test_dot_product_series_is_exact_at_full_degree(np_rng):
    X, Y = np_rng.standard_normal((10, 6)), np_rng.standard_normal((7, 6))
    c = np_rng.uniform(0, 1, size=5)
    G = X @ Y.T
    K = sum(cj * G**j for j, cj in enumerate(c))
    got = gzk_kernel(X, Y, kernel="dot_product", degree=4, coefficients=c)
    np.testing.assert_allclose(got, K, rtol=1e-10, atol=1e-10)


def test_ntk_series_converges_to_ntk_oracle(np_rng):
    X = np_rng.standard_normal((15, 5))
    K = np.asarray(ntk_relu(torch.from_numpy(X), torch.from_numpy(X), depth=2))
    errs = [
        np.linalg.norm(gzk_kernel(X, kernel="ntk", degree=q, depth=2) - K) / np.linalg.norm(K)
        for q in (2, 8, 32)
    ]
    assert errs[2] < errs[0] and errs[2] < 0.02


# --- random Gegenbauer features ---------------------------------------------------------


def test_gaussian_features_unbiased_for_the_gaussian_kernel():
    # Each frequency's pair gives cos(w_i . (x - y)), marginally unbiased for exp(-g|x-y|^2)
    # (orthogonal blocks and stratified radii correlate the frequencies negatively, which
    # only shrinks the spread of the mean: the i.i.d. 6-sigma bound is conservative).
    X = np.random.default_rng(11).standard_normal((8, 5)) * 0.6
    K = _gaussian(X, X, 0.5)
    p = 4000
    Z = GegenbauerFeatures(n_components=2 * p, gamma=0.5, random_state=0).fit_transform(X)
    C, S = Z[:, :p] * math.sqrt(p), Z[:, p:] * math.sqrt(p)
    grams = np.einsum("im,km->mik", C, C) + np.einsum("im,km->mik", S, S)
    mean, se = grams.mean(0), grams.std(0) / math.sqrt(p)
    assert np.all(np.abs(mean - K) <= 6 * se + 1e-12)
    np.testing.assert_allclose(np.diag(Z @ Z.T), 1.0, rtol=1e-12)  # cos^2 + sin^2


@pytest.mark.parametrize(
    "params",
    [
        {"kernel": "dot_product", "degree": 3, "coefficients": [0.5, 1.0, 0.5, 0.2]},
    ],
)
def test_features_are_unbiased(params):
    # Directions are i.i.d., so each direction's block of features gives an independent
    # estimate m * Z_i Z_i^T of the kernel; their mean must match the exact truncated GZK
    # within a 6-sigma confidence bound (seed fixed so the test is deterministic).
    X = np.random.default_rng(11).standard_normal((8, 5)) * 0.6
    K = gzk_kernel(X, **params)
    est = GegenbauerFeatures(n_components=4000 * (params["degree"] + 1), random_state=0, **params)
    Z = est.fit_transform(X).reshape(len(X), 4000, -1)
    grams = 4000 * np.einsum("imj,kmj->mik", Z, Z)
    mean, se = grams.mean(0), grams.std(0) / math.sqrt(len(grams))
    assert np.all(np.abs(mean - K) <= 6 * se + 1e-12)
    assert np.abs(mean - K).max() < 0.1 * np.abs(K).max()


def test_feature_error_falls_with_n_components(np_rng):
    X = np_rng.standard_normal((40, 6)) * 0.5
    K = gzk_kernel(X, kernel="gaussian", degree=8, gamma=0.5)

    def err(n):
        out = []
        for s in range(2):
            Z = GegenbauerFeatures(
                degree=8, gamma=0.5, n_components=n, random_state=s
            ).fit_transform(X)
            out.append(np.linalg.norm(Z @ Z.T - K) / np.linalg.norm(K))
        return np.mean(out)

    e_small, e_large = err(9 * 16), err(9 * 512)
    assert e_large < e_small / 3


def test_spectral_approximation_with_enough_features(np_rng):
    n, lam = 30, 1e-2
    X = np_rng.standard_normal((n, 4)) * 0.5
    K = gzk_kernel(X, kernel="gaussian", degree=10, gamma=0.5)
    Z = GegenbauerFeatures(
        degree=10, gamma=0.5, n_components=11 * 4000, random_state=0
    ).fit_transform(X)
    evals, evecs = np.linalg.eigh(K + lam * np.eye(n))
    inv_sqrt = evecs / np.sqrt(evals) @ evecs.T
    M = inv_sqrt @ (Z @ Z.T + lam * np.eye(n)) @ inv_sqrt
    eig = np.linalg.eigvalsh(M)
    assert eig.min() > 0.5 and eig.max() < 1.5


def test_ntk_features_unbiased_for_truncated_series():
    X = np.random.default_rng(5).standard_normal((6, 4))
    K = gzk_kernel(X, kernel="ntk", degree=6)
    Z = GegenbauerFeatures(kernel="ntk", degree=6, n_components=4000, random_state=0).fit_transform(
        X
    )
    grams = 4000 * Z.T[:, :, None] * Z.T[:, None, :]
    se = grams.std(0) / math.sqrt(len(grams))
    assert np.all(np.abs(grams.mean(0) - K) <= 6 * se + 1e-12)


def test_float32_preserved_and_close_to_float64(np_rng):
    X = np_rng.standard_normal((10, 3))
    est = GegenbauerFeatures(n_components=90, gamma=0.3, random_state=0)
    Z64 = est.fit_transform(X)
    Z32 = est.transform(X.astype(np.float32))
    assert Z32.dtype == np.float32 and Z64.dtype == np.float64
    assert Z64.shape == (10, est.n_components_) == (10, 90)
    np.testing.assert_allclose(Z32, Z64, atol=1e-4)


def test_torch_feature_map_on_batches_matches_transform(np_rng):
    X = np_rng.standard_normal((12, 5))
    gauss = GegenbauerFeatures(n_components=45, random_state=1).fit(X)
    batched = gauss.feature_map_(torch.from_numpy(X).reshape(3, 4, 5))
    np.testing.assert_allclose(batched.reshape(12, -1).numpy(), gauss.transform(X), atol=1e-12)
    est = GegenbauerFeatures(kernel="dot_product", coefficients=[1.0, 0.5, 0.25], degree=2,
                             n_components=45, random_state=1).fit(X)
    Z = est.transform(X)
    batched = est.feature_map_(torch.from_numpy(X).reshape(3, 4, 5))
    np.testing.assert_allclose(batched.reshape(12, -1).numpy(), Z, atol=1e-12)
    fm = est.feature_map_
    direct = gegenbauer_features(
        torch.from_numpy(X), fm.directions, fm.sqrt_weights, fm.powers, fm.gamma
    )
    np.testing.assert_allclose(direct.numpy(), Z, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_feature_map_on_cuda_matches_cpu(np_rng):
    X = np_rng.standard_normal((64, 6)) * 0.5
    est = GegenbauerFeatures(n_components=90, gamma=0.5, random_state=0).fit(X)
    Z = est.transform(X)
    fm = est.feature_map_.to("cuda")
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        out = fm(torch.from_numpy(X).to("cuda", dtype))
        assert out.dtype == dtype and out.device.type == "cuda"
        np.testing.assert_allclose(out.double().cpu().numpy(), Z, atol=tol)


def test_one_feature_input_and_zero_vector(np_rng):
    X = np.concatenate([np_rng.standard_normal((6, 1)), np.zeros((1, 1))])
    K = _gaussian(X, X, 0.5)
    Z = GegenbauerFeatures(
        degree=14, gamma=0.5, n_components=15 * 1000, random_state=0
    ).fit_transform(X)
    assert np.abs(Z @ Z.T - K).max() < 0.1


def test_warns_when_one_direction_is_too_noisy(np_rng):
    # Degree-8 dot-product series in d=64: a direction's estimate of k(x, x) has a huge
    # relative variance (high-degree Gegenbauer terms), so 10 directions approximate nothing.
    X = np_rng.standard_normal((20, 64)) / 4
    with pytest.warns(UserWarning, match=r"relative variance .* use more n_components"):
        GegenbauerFeatures(kernel="dot_product", coefficients=[1.0] * 9, degree=8,
                           n_components=90, random_state=0).fit(X)


def test_n_components_rounds_down_to_whole_directions(np_rng):
    est = GegenbauerFeatures(kernel="dot_product", coefficients=[1.0, 1.0, 1.0, 1.0, 1.0],
                             degree=4, n_components=23, random_state=0).fit(
        np_rng.standard_normal((5, 3))
    )
    assert est.n_components_ == 20
    assert est.get_feature_names_out().shape == (20,)


@pytest.mark.parametrize("m", [1, 6, 7])
def test_gaussian_output_width_is_n_components(m, np_rng):
    est = GegenbauerFeatures(n_components=m, random_state=0).fit(np_rng.standard_normal((5, 3)))
    assert est.n_components_ == m and est.transform(np.zeros((2, 3))).shape == (2, m)


@parametrize_with_checks(
    [
        GegenbauerFeatures(n_components=18, degree=2, random_state=0),
        GegenbauerFeatures(
            kernel="dot_product", coefficients=[1.0, 1.0], degree=1, n_components=8, random_state=0
        ),
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# --- errors ----------------------------------------------------------------------------


def _fit(**kw):
    return GegenbauerFeatures(**kw).fit(np.random.default_rng(0).standard_normal((5, 3)))


def test_error_unknown_kernel():
    with pytest.raises(ValueError, match="kernel must be one of"):
        _fit(kernel="laplace")


def test_error_negative_degree():
    with pytest.raises(ValueError, match="degree must be >= 0, got -1"):
        _fit(degree=-1)


def test_error_float_degree():
    with pytest.raises(TypeError, match="degree must be an int"):
        _fit(degree=2.5)


def test_error_zero_components():
    with pytest.raises(ValueError, match="n_components must be >= 1, got 0"):
        _fit(n_components=0)


def test_error_nonpositive_gamma():
    with pytest.raises(ValueError, match="gamma must be > 0.0, got 0.0"):
        _fit(gamma=0.0)


def test_error_missing_coefficients():
    with pytest.raises(ValueError, match="coefficients must be given"):
        _fit(kernel="dot_product")


def test_error_negative_coefficients():
    with pytest.raises(ValueError, match="coefficients must be finite and >= 0"):
        _fit(kernel="dot_product", coefficients=[1.0, -0.5])


def test_error_nan_input(np_rng):
    X = np_rng.standard_normal((5, 3))
    X[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        GegenbauerFeatures().fit(X)


def test_error_transform_wrong_width(np_rng):
    est = _fit()
    with pytest.raises(ValueError, match="3 features"):
        est.transform(np_rng.standard_normal((4, 2)))


def test_error_feature_map_wrong_width():
    est = _fit()
    with pytest.raises(ValueError, match="x must have 3 features"):
        est.feature_map_(torch.zeros(2, 4, dtype=torch.float64))


def test_error_gegenbauer_dimension_too_small():
    with pytest.raises(ValueError, match="d must be >= 2, got 1"):
        gegenbauer(np.zeros(3), 2, 1)


def test_error_bad_depth():
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        _fit(kernel="ntk", depth=0)


def test_error_coefficients_not_1d():
    with pytest.raises(ValueError, match=r"coefficients must be a non-empty 1-D sequence, got shape \(2, 2\)"):
        _fit(kernel="dot_product", coefficients=[[1.0, 0.5], [0.2, 0.1]])
