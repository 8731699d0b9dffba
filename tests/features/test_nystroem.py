"""RLSNystroem: exact when every point is a landmark, K~ <= K, spectral error vs ridge,
leverage-score estimates vs exact ridge leverage scores, structured inputs, sklearn checks."""

import numpy as np
import pytest
import torch
from sklearn.kernel_approximation import Nystroem
from sklearn.metrics.pairwise import laplacian_kernel, polynomial_kernel, rbf_kernel
from sklearn.utils.estimator_checks import parametrize_with_checks

from kernelsketch.features.nystroem import RLSNystroem, pairwise_kernel


def _gram(Z):
    return Z @ Z.T


def _isolated_points(seed):
    """A tight cluster (numerically rank ~4) plus 10 isolated points (leverage ~1 each)."""
    rng = np.random.default_rng(seed)
    return np.vstack([rng.normal(size=(300, 3)) * 0.02, rng.normal(size=(10, 3)) * 8])


@parametrize_with_checks([RLSNystroem(n_components=8, random_state=0)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize(
    "kernel, exact",
    [
        ("rbf", lambda X: rbf_kernel(X, gamma=0.3)),
        ("laplacian", lambda X: laplacian_kernel(X, gamma=0.3)),
        ("polynomial", lambda X: polynomial_kernel(X, gamma=0.3, degree=2, coef0=1.0)),
    ],
)
def test_all_landmarks_reproduce_kernel(kernel, exact, np_rng):
    X = np_rng.normal(size=(40, 3))
    Z = RLSNystroem(n_components=40, kernel=kernel, gamma=0.3, degree=2).fit_transform(X)
    K = exact(X)
    assert np.linalg.norm(_gram(Z) - K, 2) <= 1e-6 * np.linalg.norm(K, 2)


def test_nystroem_never_exceeds_kernel(np_rng):
    X = np_rng.normal(size=(120, 4))
    K = rbf_kernel(X, gamma=0.25)
    Z = RLSNystroem(n_components=25, gamma=0.25).fit_transform(X)
    assert np.linalg.eigvalsh(K - _gram(Z)).min() >= -1e-8 * np.linalg.norm(K, 2)


def _spectral_eps(K, Kt, lam):
    """Smallest eps with (1-eps)(K+lam I) <= Kt+lam I <= (1+eps)(K+lam I)."""
    w, V = np.linalg.eigh(K + lam * np.eye(len(K)))
    inv_sqrt = (V / np.sqrt(w)) @ V.T
    ev = np.linalg.eigvalsh(inv_sqrt @ (Kt + lam * np.eye(len(K))) @ inv_sqrt)
    return max(ev.max() - 1.0, 1.0 - ev.min())


def test_spectral_error_below_ridge():
    # K - K~ <= eps * lambda * I (Musco & Musco Thm. 3), hence the regularised form
    # (1 - eps)(K + lam I) <= K~ + lam I <= (1 + eps)(K + lam I); d_lambda ~ 22, s = 80.
    rng = np.random.default_rng(1)
    for seed in range(4):
        X = rng.normal(size=(300, 2))
        K = rbf_kernel(X, gamma=0.5)
        lam = 0.5
        Z = RLSNystroem(n_components=80, gamma=0.5, ridge=lam, random_state=seed).fit_transform(X)
        assert np.linalg.norm(K - _gram(Z), 2) <= 0.3 * lam
        assert _spectral_eps(K, _gram(Z), lam) < 0.15


def test_regularised_spectral_error_falls_with_landmarks():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 2))
    K, lam = rbf_kernel(X, gamma=0.5), 0.5
    eps = [np.mean([_spectral_eps(K, _gram(RLSNystroem(n_components=s, gamma=0.5, ridge=lam,
                                                       random_state=t).fit_transform(X)), lam)
                    for t in range(3)])
           for s in (20, 40, 80)]
    assert eps[0] > 1.4 * eps[1] > 1.96 * eps[2]


def test_error_falls_with_landmarks():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 3))
    K = rbf_kernel(X, gamma=0.3)
    errs = []
    for s in (10, 40, 160):
        e = [np.linalg.norm(K - _gram(RLSNystroem(n_components=s, gamma=0.3, random_state=t)
                                        .fit_transform(X)), 2) for t in range(3)]
        errs.append(np.mean(e))
    assert errs[0] > 2 * errs[1] > 4 * errs[2]


def test_leverage_estimates_within_constant_of_exact():
    # Regime of the guarantee: n_components (60) above d_lambda (~45).
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 3))
    lam = 1.0
    K = rbf_kernel(X, gamma=0.5)
    tau = np.diag(K @ np.linalg.inv(K + lam * np.eye(len(K))))
    est = RLSNystroem(n_components=60, gamma=0.5, ridge=lam, random_state=0).fit(X)
    # Over-estimates (what the sampling guarantee needs), and not by much in total.
    ratio = est.leverage_scores_ / tau
    assert ratio.min() >= 0.6
    assert est.leverage_scores_.sum() <= 2.5 * tau.sum()


def test_isolated_points_beat_uniform_nystroem():
    # Uniform landmarks miss most isolated points (error 1); leverage sampling gets all.
    rls, uni = [], []
    for seed in range(4):
        X = _isolated_points(seed)
        K = rbf_kernel(X, gamma=1.0)
        Z = RLSNystroem(n_components=30, gamma=1.0, ridge=0.1, random_state=seed).fit_transform(X)
        rls.append(np.linalg.norm(K - _gram(Z), 2))
        Zu = Nystroem(n_components=30, gamma=1.0, random_state=seed).fit_transform(X)
        uni.append(np.linalg.norm(K - _gram(Zu), 2))
    assert max(rls) < 0.1 and min(uni) > 0.5


def test_callable_kernel_matches_string(np_rng):
    X = np_rng.normal(size=(50, 3))

    def rbf(A, B):
        return torch.exp(-0.5 * torch.cdist(A, B) ** 2)

    Z1 = RLSNystroem(n_components=20, kernel=rbf, random_state=4).fit_transform(X)
    Z2 = RLSNystroem(n_components=20, gamma=0.5, random_state=4).fit_transform(X)
    np.testing.assert_allclose(_gram(Z1), _gram(Z2), atol=1e-8)


def test_torch_map_batched_and_float32(np_rng):
    X = np_rng.normal(size=(60, 3))
    est = RLSNystroem(n_components=15, random_state=0).fit(X)
    x = torch.from_numpy(X[:10]).reshape(2, 5, 3)
    out = est.feature_map_(x)
    assert out.shape == (2, 5, 15) and out.dtype == torch.float64
    np.testing.assert_allclose(out.reshape(10, 15).numpy(), est.transform(X[:10]), atol=1e-10)
    out32 = est.feature_map_(x.float())
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.reshape(10, 15).numpy(), est.transform(X[:10]), atol=1e-4)


def test_pairwise_kernel_unknown_name():
    X = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="kernel must be one of"):
        pairwise_kernel(X, X, "sigmoid")


X_BAD = np.random.default_rng(0).normal(size=(20, 3))


def test_bad_n_components():
    with pytest.raises(ValueError, match="n_components must be >= 1, got 0"):
        RLSNystroem(n_components=0).fit(X_BAD)


def test_bad_n_components_type():
    with pytest.raises(TypeError, match="n_components must be an int"):
        RLSNystroem(n_components=2.5).fit(X_BAD)


def test_bad_kernel():
    with pytest.raises(ValueError, match="kernel must be one of"):
        RLSNystroem(kernel="sigmoid").fit(X_BAD)


def test_bad_gamma():
    with pytest.raises(ValueError, match="gamma must be > 0.0, got -1.0"):
        RLSNystroem(gamma=-1.0).fit(X_BAD)


def test_bad_ridge():
    with pytest.raises(ValueError, match="ridge must be > 0.0, got 0.0"):
        RLSNystroem(ridge=0.0).fit(X_BAD)


def test_bad_degree():
    with pytest.raises(ValueError, match="degree must be >= 1, got 0"):
        RLSNystroem(kernel="polynomial", degree=0).fit(X_BAD)


def test_nan_input():
    X = X_BAD.copy()
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        RLSNystroem().fit(X)


def test_wrong_feature_count_at_transform():
    est = RLSNystroem(n_components=5).fit(X_BAD)
    with pytest.raises(ValueError, match="features"):
        est.transform(X_BAD[:, :2])


def test_bad_coef0():
    with pytest.raises(ValueError, match="coef0 must be finite, got inf"):
        RLSNystroem(kernel="polynomial", coef0=float("inf")).fit(X_BAD)
