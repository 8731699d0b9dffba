"""Primal kernel ridge regression: CG / Cholesky vs a dense float64 solve, sparse features,
exactness with an exact feature map, error falling with features, sklearn checks, bad input."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.kernel_ridge import KernelRidge as ExactKernelRidge
from sklearn.utils.estimator_checks import parametrize_with_checks

from kernelsketch.features.binning import WeightedRandomBinning
from kernelsketch.features.gegenbauer import GegenbauerFeatures
from kernelsketch.features.krr import (
    KernelRidge,
    _as_torch_features,
    conjugate_gradient,
    gram_solve,
    ridge_solve,
)
from kernelsketch.features.nystroem import RLSNystroem
from kernelsketch.features.polynomial import PolynomialLeverageSampler, PolynomialSketch


def _reference(Z, y, alpha):
    return np.linalg.solve(Z.T @ Z + alpha * np.eye(Z.shape[1]), Z.T @ y)


@parametrize_with_checks([KernelRidge(RLSNystroem(n_components=30, random_state=0), alpha=0.1)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_ridge_solve_matches_dense_solve(solver, np_rng):
    rng = np_rng
    Z = rng.normal(size=(200, 30)) * np.logspace(0, -2, 30)
    y = rng.normal(size=(200, 2))
    w = ridge_solve(torch.from_numpy(Z), torch.from_numpy(y), 1e-2, solver=solver)
    ref = _reference(Z, y, 1e-2)
    assert np.linalg.norm(w.numpy() - ref) <= 1e-6 * np.linalg.norm(ref)


def test_cholesky_solve_when_alpha_is_below_the_rounding_of_the_gram(np_rng):
    # Rank-1 features of scale 1e37: Z^T Z + alpha I is singular in float64 (alpha = 1 is
    # below its rounding), the minimiser is still V diag(s / (s^2 + alpha)) U^T y.
    Z = np.outer(np_rng.normal(size=3), np_rng.normal(size=8)) * 1e37
    y = np_rng.normal(size=3)
    U, s, Vt = np.linalg.svd(Z, full_matrices=False)
    ref = Vt.T @ (s / (s * s + 1.0) * (U.T @ y))
    w = ridge_solve(torch.from_numpy(Z), torch.from_numpy(y), 1.0, solver="cholesky")
    assert np.isfinite(w.numpy()).all()
    assert np.linalg.norm(w.numpy() - ref) <= 1e-8 * np.linalg.norm(ref)


def test_gram_solve_from_the_gram_alone_when_alpha_is_below_its_rounding(np_rng):
    # The Dask fit has only G = Z^T Z and Z^T y. Z = c [x, x, u, 0...] at c = 1e37: alpha = 1
    # is below G's rounding. The minimiser is w = [a/sqrt2, a/sqrt2, b, 0...] with (a, b) the
    # ridge solution of the 2-column M = c [sqrt2 x, u] (well conditioned, by its SVD).
    x, u, y = np_rng.normal(size=5), np_rng.normal(size=5), np_rng.normal(size=5)
    c = 1e37
    Z = np.zeros((5, 8))
    Z[:, 0] = Z[:, 1] = c * x
    Z[:, 2] = c * u
    U, s, Vt = np.linalg.svd(c * np.stack([np.sqrt(2) * x, u], 1), full_matrices=False)
    a, b = Vt.T @ (s / (s * s + 1.0) * (U.T @ y))
    ref = np.array([a / np.sqrt(2), a / np.sqrt(2), b, 0, 0, 0, 0, 0])
    w = gram_solve(torch.from_numpy(Z.T @ Z), torch.from_numpy(Z.T @ y), 1.0)
    assert np.linalg.norm(w.numpy() - ref) <= 1e-8 * np.linalg.norm(ref)


def test_ridge_solve_vector_target_shape(np_rng):
    rng = np_rng
    Z, y = torch.from_numpy(rng.normal(size=(50, 8))), torch.from_numpy(rng.normal(size=50))
    for solver in ("cholesky", "cg"):
        w = ridge_solve(Z, y, 0.5, solver=solver)
        assert w.shape == (8,)
        np.testing.assert_allclose(w.numpy(), _reference(Z.numpy(), y.numpy(), 0.5), rtol=1e-6)


def test_sparse_features_match_dense(np_rng):
    rng = np_rng
    Zs = sp.random(300, 60, density=0.05, random_state=int(rng.integers(1 << 31)), format="csr")
    y = rng.normal(size=300)
    Zt = _as_torch_features(Zs, "cpu", torch.float64)
    w = ridge_solve(Zt, torch.from_numpy(y), 0.1)
    ref = _reference(Zs.toarray(), y, 0.1)
    assert np.linalg.norm(w.numpy() - ref) <= 1e-6 * np.linalg.norm(ref)


def test_conjugate_gradient_spd_system_with_preconditioner(np_rng):
    rng = np_rng
    M = rng.normal(size=(40, 40))
    A = torch.from_numpy(M @ M.T + np.diag(np.logspace(0, 3, 40)))
    b = torch.from_numpy(rng.normal(size=40))
    x, n_iter = conjugate_gradient(lambda v: A @ v, b, preconditioner=torch.diagonal(A), tol=1e-10)
    ref = np.linalg.solve(A.numpy(), b.numpy())
    assert np.linalg.norm(x.numpy() - ref) <= 1e-7 * np.linalg.norm(ref)
    assert 1 <= n_iter <= 400


def test_exact_features_reproduce_exact_krr(np_rng):
    # All points as Nystroem landmarks: Z Z^T = K, so primal ridge = exact KRR.
    rng = np_rng
    X, Xt = rng.normal(size=(80, 3)), rng.normal(size=(20, 3))
    y = np.sin(X[:, 0]) + 0.1 * rng.normal(size=80)
    model = KernelRidge(RLSNystroem(n_components=80, gamma=0.5), alpha=0.1).fit(X, y)
    exact = ExactKernelRidge(alpha=0.1, kernel="rbf", gamma=0.5).fit(X, y - y.mean())
    np.testing.assert_allclose(model.predict(Xt), exact.predict(Xt) + y.mean(), atol=1e-6)


def test_prediction_error_falls_with_features():
    rng = np.random.default_rng(5)
    X, Xt = rng.normal(size=(400, 2)), rng.normal(size=(100, 2))
    y = np.sin(2 * X[:, 0]) * X[:, 1]
    exact = ExactKernelRidge(alpha=1e-2, kernel="rbf", gamma=1.0).fit(X, y - y.mean())
    ref = exact.predict(Xt) + y.mean()
    errs = []
    for s in (10, 40, 160):
        e = [np.mean((KernelRidge(RLSNystroem(n_components=s, gamma=1.0, random_state=t),
                                  alpha=1e-2).fit(X, y).predict(Xt) - ref) ** 2) for t in range(3)]
        errs.append(np.mean(e))
    assert errs[0] > 4 * errs[1] > 16 * errs[2]


def test_cg_and_cholesky_predictions_agree(np_rng):
    rng = np_rng
    X, y = rng.normal(size=(100, 3)), rng.normal(size=100)
    feats = RLSNystroem(n_components=30, random_state=1)
    p1 = KernelRidge(feats, alpha=0.1, solver="cholesky").fit(X, y).predict(X)
    p2 = KernelRidge(feats, alpha=0.1, solver="cg", tol=1e-12).fit(X, y).predict(X)
    np.testing.assert_allclose(p1, p2, atol=1e-6)


def test_sparse_input_through_kernel_ridge(np_rng):
    # Scipy sparse X flows through fit/predict (PolynomialSketch never densifies it) and
    # gives the dense-input model; PolynomialLeverageSampler returns sparse features (CG).
    rng = np_rng
    X = sp.random(120, 40, density=0.1, random_state=int(rng.integers(1 << 31)), format="csr")
    y = rng.normal(size=120)
    feats = PolynomialSketch(n_components=64, degree=2, coef0=1.0, kind="tensorsketch",
                             random_state=3)
    p_sparse = KernelRidge(feats, alpha=0.1).fit(X, y).predict(X)
    p_dense = KernelRidge(feats, alpha=0.1).fit(X.toarray(), y).predict(X.toarray())
    np.testing.assert_allclose(p_sparse, p_dense, rtol=1e-8, atol=1e-10)
    model = KernelRidge(PolynomialLeverageSampler(n_components=64, degree=2, random_state=0),
                        alpha=0.1).fit(X, y)
    assert model.n_iter_ > 1 and model.predict(X).shape == (120,)


def test_multi_target(np_rng):
    rng = np_rng
    X, Y = rng.normal(size=(60, 3)), rng.normal(size=(60, 2))
    feats = RLSNystroem(n_components=20, random_state=2)
    both = KernelRidge(feats, alpha=0.3).fit(X, Y).predict(X)
    first = KernelRidge(feats, alpha=0.3).fit(X, Y[:, 0]).predict(X)
    assert both.shape == (60, 2)
    np.testing.assert_allclose(both[:, 0], first, atol=1e-8)


_OK = torch.Generator().manual_seed(0)
Z_OK = torch.randn(10, 3, dtype=torch.float64, generator=_OK)
Y_OK = torch.randn(10, dtype=torch.float64, generator=_OK)


def test_ridge_solve_bad_alpha():
    with pytest.raises(ValueError, match="alpha must be > 0.0, got 0.0"):
        ridge_solve(Z_OK, Y_OK, 0.0)


def test_ridge_solve_bad_solver():
    with pytest.raises(ValueError, match="solver must be one of"):
        ridge_solve(Z_OK, Y_OK, 1.0, solver="lsqr")


def test_ridge_solve_row_mismatch():
    with pytest.raises(ValueError, match="y must have 10 rows"):
        ridge_solve(Z_OK, Y_OK[:7], 1.0)


def test_ridge_solve_dtype_mismatch():
    with pytest.raises(TypeError, match="y must have the same dtype as features"):
        ridge_solve(Z_OK, Y_OK.float(), 1.0)


def test_ridge_solve_nan_features():
    Z = Z_OK.clone()
    Z[0, 0] = float("nan")
    with pytest.raises(ValueError, match="features must be finite"):
        ridge_solve(Z, Y_OK, 1.0)


def test_ridge_solve_wrong_rank():
    with pytest.raises(ValueError, match="features must have 2 dimensions"):
        ridge_solve(Z_OK[0], Y_OK, 1.0)


def test_ridge_solve_nan_target():
    y = Y_OK.clone()
    y[3] = float("nan")
    with pytest.raises(ValueError, match="y must be finite"):
        ridge_solve(Z_OK, y, 1.0)


def test_ridge_solve_bad_tol_with_cholesky():
    with pytest.raises(ValueError, match="tol must be > 0.0, got 0.0"):
        ridge_solve(Z_OK, Y_OK, 1.0, solver="cholesky", tol=0.0)


def test_ridge_solve_bad_max_iter():
    with pytest.raises(ValueError, match="max_iter must be >= 1, got 0"):
        ridge_solve(Z_OK, Y_OK, 1.0, solver="cg", max_iter=0)


def test_estimator_bad_tol():
    with pytest.raises(ValueError, match="tol must be > 0.0, got -1.0"):
        KernelRidge(tol=-1.0).fit(np.ones((5, 2)), np.ones(5))


def test_estimator_bad_max_iter_type():
    with pytest.raises(TypeError, match="max_iter must be an int"):
        KernelRidge(max_iter=2.5).fit(np.ones((5, 2)), np.ones(5))


def test_estimator_bad_device():
    with pytest.raises(ValueError, match="device must be None, a device string"):
        KernelRidge(device="quantum").fit(np.ones((5, 2)), np.ones(5))


def test_estimator_bad_solver():
    with pytest.raises(ValueError, match="solver must be one of"):
        KernelRidge(solver="lsqr").fit(np.ones((5, 2)), np.ones(5))


def test_cg_bad_preconditioner():
    A = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="preconditioner must be a positive vector of length 3"):
        conjugate_gradient(lambda v: A @ v, torch.ones(3, dtype=torch.float64),
                           preconditioner=-torch.ones(3, dtype=torch.float64))


def test_estimator_bad_alpha():
    with pytest.raises(ValueError, match="alpha must be > 0.0, got -1.0"):
        KernelRidge(alpha=-1.0).fit(np.ones((5, 2)), np.ones(5))


def test_estimator_bad_features():
    with pytest.raises(TypeError, match="features must be a transformer with fit and transform"):
        KernelRidge(features="rbf").fit(np.ones((5, 2)), np.ones(5))


@pytest.mark.parametrize(
    "make_features, exact_kernel",
    [
        # Sparse CSR features: the CG path on torch sparse tensors.
        (lambda m, s: WeightedRandomBinning(kernel="laplacian", length_scale=2.0,
                                            n_components=m, random_state=s),
         {"kernel": "laplacian", "gamma": 0.5}),
        # The tree kind: the default's exact head would already be exact at m = 20 here.
        (lambda m, s: PolynomialSketch(n_components=m, degree=2, gamma=0.5, coef0=1.0,
                                       kind="srht", random_state=s),
         {"kernel": "poly", "degree": 2, "gamma": 0.5, "coef0": 1.0}),
        (lambda m, s: PolynomialLeverageSampler(n_components=m, degree=2, gamma=0.5, coef0=1.0,
                                                ridge=0.3, random_state=s),
         {"kernel": "poly", "degree": 2, "gamma": 0.5, "coef0": 1.0}),
    ],
)
def test_krr_converges_to_exact_with_feature_count(make_features, exact_kernel):
    rng = np.random.default_rng(9)
    X, Xt = rng.normal(size=(200, 3)), rng.normal(size=(60, 3))
    y = np.cos(X[:, 0]) + X[:, 1] * X[:, 2] + 0.1 * rng.normal(size=200)
    ref = ExactKernelRidge(alpha=0.3, **exact_kernel).fit(X, y - y.mean()).predict(Xt) + y.mean()
    errs = []
    for m in (20, 80, 320):
        p = [KernelRidge(make_features(m, s), alpha=0.3).fit(X, y).predict(Xt) for s in range(2)]
        errs.append(np.mean([np.sqrt(np.mean((q - ref) ** 2)) for q in p]))
    assert errs[0] > 1.4 * errs[1] > 1.96 * errs[2]


def test_krr_with_gegenbauer_features_converges_to_exact_gaussian_krr():
    # Inputs scaled so the degree-12 Taylor truncation of the Gaussian is negligible;
    # 13 features per direction (one per radial term).
    rng = np.random.default_rng(9)
    X, Xt = 0.5 * rng.normal(size=(200, 3)), 0.5 * rng.normal(size=(60, 3))
    y = np.cos(2 * X[:, 0]) + 4 * X[:, 1] * X[:, 2] + 0.1 * rng.normal(size=200)
    ref = ExactKernelRidge(alpha=0.1, kernel="rbf", gamma=0.5).fit(X, y - y.mean()).predict(Xt)
    ref += y.mean()
    errs = []
    for m in (8, 32, 128):
        p = [KernelRidge(GegenbauerFeatures(degree=12, gamma=0.5, n_components=13 * m,
                                            random_state=s), alpha=0.1).fit(X, y).predict(Xt)
             for s in range(2)]
        errs.append(np.mean([np.sqrt(np.mean((q - ref) ** 2)) for q in p]))
    assert errs[0] > 1.4 * errs[1] > 1.96 * errs[2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "features",
    [
        RLSNystroem(n_components=40, random_state=0),
        WeightedRandomBinning(n_components=64, random_state=0),
        PolynomialLeverageSampler(n_components=64, degree=3, coef0=1.0, random_state=0),
        PolynomialSketch(n_components=64, degree=3, coef0=1.0, random_state=0),
        GegenbauerFeatures(degree=6, gamma=0.2, n_components=70, random_state=0),
    ],
)
def test_gpu_solve_and_feature_maps_match_cpu(features, np_rng):
    rng = np_rng
    X, y = rng.normal(size=(150, 4)), rng.normal(size=150)
    cpu = KernelRidge(features, alpha=0.5).fit(X, y)
    gpu = KernelRidge(features, alpha=0.5, device="cuda").fit(X, y)
    np.testing.assert_allclose(gpu.predict(X), cpu.predict(X), rtol=1e-6, atol=1e-8)
    fmap = cpu.features_.feature_map_
    out_cpu = fmap(torch.from_numpy(X))
    out_gpu = fmap.to("cuda")(torch.from_numpy(X).cuda())
    for a, b in zip(out_cpu if isinstance(out_cpu, tuple) else (out_cpu,),
                    out_gpu if isinstance(out_gpu, tuple) else (out_gpu,)):
        np.testing.assert_allclose(b.cpu().numpy(), a.numpy(), rtol=1e-6, atol=1e-8)
