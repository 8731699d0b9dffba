"""WeightedRandomBinning: the exact induced kernel (oracle) vs its targets, Monte Carlo
unbiasedness of the sparse features, spectral approximation, error falling with grids."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.special import gamma as gamma_fn
from sklearn.gaussian_process.kernels import Matern
from sklearn.utils.estimator_checks import parametrize_with_checks

from kernelsketch.features.binning import WeightedRandomBinning, weighted_binning_kernel


def _spectral_eps(K, Kt, lam):
    """Smallest eps with (1-eps)(K+lam I) <= Kt+lam I <= (1+eps)(K+lam I)."""
    w, V = np.linalg.eigh(K + lam * np.eye(len(K)))
    inv_sqrt = (V / np.sqrt(w)) @ V.T
    ev = np.linalg.eigvalsh(inv_sqrt @ (Kt + lam * np.eye(len(K))) @ inv_sqrt)
    return max(ev.max() - 1.0, 1.0 - ev.min())


@parametrize_with_checks([WeightedRandomBinning(n_components=20, random_state=0)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_laplacian_oracle_is_exact_laplace_kernel():
    rng = np.random.default_rng()
    X, Y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3))
    K = weighted_binning_kernel(X, Y, kernel="laplacian", length_scale=0.7)
    ref = np.exp(-np.abs(X[:, None] - Y[None]).sum(-1) / 0.7)
    np.testing.assert_allclose(K, ref, rtol=1e-12)


def test_gaussian_oracle_close_to_gaussian_kernel():
    rng = np.random.default_rng()
    d = 3
    X, Y = rng.normal(size=(30, d)), rng.normal(size=(30, d))
    K = weighted_binning_kernel(X, Y, kernel="gaussian", length_scale=1.3)
    ref = np.exp(-((X[:, None] - Y[None]) ** 2).sum(-1) / (2 * 1.3**2))
    assert np.abs(K - ref).max() <= 0.0015 * d
    np.testing.assert_allclose(np.diag(weighted_binning_kernel(X, kernel="gaussian")), 1.0)


def test_gaussian_oracle_small_distance_expansion():
    # E_w[A(d / w)] = 1 - 6 E[w^-2] d^2 + 21 E[w^-4] d^4 - 21 E[w^-5] d^5 + O(d^7) near 0,
    # w = 3.577 g, g ~ Gamma(35, 1/35): C^4, not C^5 (the documented smoothness limit).
    d = np.array([0.1, 0.05, 0.025])
    # E[g^-k] = 35^k Gamma(35 - k) / Gamma(35) for g ~ Gamma(35, scale 1/35).
    m2, m4, m5 = (35.0**k * gamma_fn(35.0 - k) / gamma_fn(35.0) / 3.577**k for k in (2, 4, 5))
    k1 = weighted_binning_kernel(d[:, None], np.zeros((1, 1)), kernel="gaussian")[:, 0]
    resid = (k1 - (1 - 6 * m2 * d**2 + 21 * m4 * d**4)) / d**5
    np.testing.assert_allclose(resid, -21 * m5, rtol=0.02)


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
def test_matern_oracle_close_to_matern_kernel(nu):
    rng = np.random.default_rng()
    X, Y = rng.normal(size=(15, 2)), rng.normal(size=(15, 2))
    K = weighted_binning_kernel(X, Y, kernel="matern", nu=nu, length_scale=0.8)
    ref = Matern(length_scale=0.8, nu=nu)(X, Y)
    assert np.abs(K - ref).max() <= 0.006


@pytest.mark.parametrize("kernel", ["laplacian", "gaussian", "matern"])
def test_features_unbiased_for_induced_kernel(kernel):
    # Per-grid estimates R * w_i w_j [same cell] are i.i.d. with mean k(x_i, x_j):
    # their average must lie within 5 standard errors (deterministic seed).
    rng = np.random.default_rng(7)
    X = rng.normal(size=(5, 2)) * 0.8
    R = 20000
    est = WeightedRandomBinning(n_components=R, kernel=kernel, nu=1.5, random_state=3).fit(X)
    cells, w = est.feature_map_(torch.from_numpy(X))
    same = (cells[:, None] == cells[None, :]).all(-1).numpy()  # [n, n, R]
    per_grid = R * w.numpy()[:, None, :] * w.numpy()[None, :, :] * same
    mean, se = per_grid.mean(-1), per_grid.std(-1) / np.sqrt(R)
    K = weighted_binning_kernel(X, kernel=kernel, nu=1.5)
    assert np.all(np.abs(mean - K) <= 5 * se + 1e-12)
    Z = est.transform(X)
    np.testing.assert_allclose((Z @ Z.T).toarray(), mean, atol=1e-10)


def test_spectral_approximation_and_error_falls_with_grids():
    rng = np.random.default_rng(11)
    X = rng.uniform(-2, 2, size=(40, 2))
    K = weighted_binning_kernel(X, kernel="gaussian")
    lam = 0.1
    eps = []
    for R in (100, 400, 1600):
        e = []
        for seed in range(3):
            Z = WeightedRandomBinning(n_components=R, random_state=seed).fit_transform(X)
            e.append(_spectral_eps(K, (Z @ Z.T).toarray(), lam))
        eps.append(np.mean(e))
    assert eps[0] > 1.5 * eps[1] > 2.25 * eps[2]
    assert eps[2] < 0.5


def test_sparse_output_one_nonzero_per_grid_and_dtype():
    rng = np.random.default_rng()
    X = rng.normal(size=(50, 3)).astype(np.float32)
    est = WeightedRandomBinning(n_components=30, kernel="laplacian", random_state=0).fit(X)
    Z = est.transform(X)
    assert sp.issparse(Z) and Z.format == "csr" and Z.dtype == np.float32
    assert np.all(np.diff(Z.indptr) == 30)
    assert Z.shape[1] == est.n_features_out_ == len(est.get_feature_names_out())


def test_unseen_cells_are_dropped():
    X = np.random.default_rng().normal(size=(20, 2))
    est = WeightedRandomBinning(n_components=10, random_state=0).fit(X)
    far = est.transform(X[:3] + 1e6)
    assert far.nnz == 0


def test_torch_map_batched():
    X = np.random.default_rng().normal(size=(6, 2))
    est = WeightedRandomBinning(n_components=8, random_state=0).fit(X)
    cells, w = est.feature_map_(torch.from_numpy(X).reshape(2, 3, 2).float())
    assert cells.shape == (2, 3, 8, 2) and cells.dtype == torch.int64
    assert w.shape == (2, 3, 8) and w.dtype == torch.float32


X_BAD = np.random.default_rng(0).normal(size=(10, 2))


def test_bad_n_components():
    with pytest.raises(ValueError, match="n_components must be >= 1, got 0"):
        WeightedRandomBinning(n_components=0).fit(X_BAD)


def test_bad_kernel():
    with pytest.raises(ValueError, match="kernel must be one of"):
        WeightedRandomBinning(kernel="rbf").fit(X_BAD)


def test_bad_length_scale():
    with pytest.raises(ValueError, match="length_scale must be > 0.0, got -2.0"):
        WeightedRandomBinning(length_scale=-2.0).fit(X_BAD)


def test_bad_nu():
    with pytest.raises(ValueError, match="nu must be > 0.0, got 0.0"):
        WeightedRandomBinning(kernel="matern", nu=0.0).fit(X_BAD)


def test_nan_input():
    X = X_BAD.copy()
    X[1, 1] = np.inf
    with pytest.raises(ValueError, match="infinity|NaN"):
        WeightedRandomBinning().fit(X)


def test_oracle_bad_kernel():
    with pytest.raises(ValueError, match="kernel must be one of"):
        weighted_binning_kernel(X_BAD, kernel="cauchy")
