"""Fully-connected ReLU NTK / NNGP: exact oracles, NTKRandomFeatures and NTKSketch."""

import math

import numpy as np
import pytest
import torch

from kernelsketch.features.activations import dual_activation
from kernelsketch.features.ntk import nngp_relu, ntk_relu

f64 = torch.float64


def _unit_rows(n, d, generator):
    X = torch.randn(n, d, dtype=f64, generator=generator)
    return X / X.norm(dim=1, keepdim=True)


# ----------------------------------------------------------------------------- exact oracles


def test_depth1_ntk_matches_arccos_formula(torch_generator):
    X, Y = torch.randn(7, 5, dtype=f64, generator=torch_generator), torch.randn(4, 5, dtype=f64, generator=torch_generator)
    nx, ny = X.norm(dim=1)[:, None], Y.norm(dim=1)[None, :]
    t = (X @ Y.T / (nx * ny)).clamp(-1, 1)
    theta = torch.arccos(t)
    # Theta^(1) = <x,y> (pi - theta)/pi + |x||y| (sin theta + (pi - theta) cos theta)/pi
    want = (
        X @ Y.T * (math.pi - theta) / math.pi
        + nx * ny * (torch.sin(theta) + (math.pi - theta) * t) / math.pi
    )
    torch.testing.assert_close(ntk_relu(X, Y, depth=1), want, rtol=1e-10, atol=1e-10)


def test_nngp_recursion_is_twice_the_relu_dual_of_the_previous_layer(torch_generator):
    X = torch.randn(6, 4, dtype=f64, generator=torch_generator)
    # Rows of a Cholesky factor of Sigma^(1) have Gram Sigma^(1); one more layer is 2 E[relu relu].
    sigma1 = nngp_relu(X, depth=1) + 1e-12 * torch.eye(6, dtype=f64)
    L = torch.linalg.cholesky(sigma1)
    torch.testing.assert_close(
        nngp_relu(X, depth=2), 2 * dual_activation("relu", L), atol=1e-9, rtol=1e-9
    )


def test_depth1_ntk_is_mean_gradient_inner_product_of_random_networks(torch_generator):
    # f(x) = sqrt(2/m) v . relu(W x): E_{W,v}[<grad f(x), grad f(y)>] = Theta^(1) exactly.
    g = torch.Generator().manual_seed(0)
    X = torch.randn(5, 3, dtype=f64, generator=torch_generator)
    m = 200_000
    W = torch.randn(m, 3, generator=g, dtype=f64)
    v = torch.randn(m, generator=g, dtype=f64)
    pre = X @ W.T
    grad_v = math.sqrt(2 / m) * torch.relu(pre)
    step = (pre > 0).to(f64) * v
    emp = grad_v @ grad_v.T + (2 / m) * (step @ step.T) * (X @ X.T)
    torch.testing.assert_close(emp, ntk_relu(X, depth=1), rtol=0.02, atol=0.02)


def test_deep_ntk_matches_empirical_ntk_of_a_wide_network(torch_generator):
    g = torch.Generator().manual_seed(1)
    depth, width = 2, 2048
    X = _unit_rows(4, 5, torch_generator)
    dims = [5] + [width] * depth
    Ws = [
        torch.randn(dims[i + 1], dims[i], generator=g, dtype=f64, requires_grad=True)
        for i in range(depth)
    ]
    v = torch.randn(width, generator=g, dtype=f64, requires_grad=True)
    params = Ws + [v]
    grads = []
    for x in X:
        h = x
        for i, W in enumerate(Ws):  # NTK parameterisation; Sigma^(0) = <x, y> (no 1/d)
            h = math.sqrt(2) * torch.relu(W @ h / (math.sqrt(h.numel()) if i else 1.0))
        out = v @ h / math.sqrt(width)
        grads.append(torch.cat([gr.reshape(-1) for gr in torch.autograd.grad(out, params)]))
    G = torch.stack(grads)
    K = ntk_relu(X, depth=depth)
    assert torch.linalg.norm(G @ G.T - K) / torch.linalg.norm(K) < 0.1


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_diagonal_and_homogeneity(depth, torch_generator):
    X, Y = torch.randn(5, 3, dtype=f64, generator=torch_generator), torch.randn(2, 3, dtype=f64, generator=torch_generator)
    sq = (X * X).sum(1)
    torch.testing.assert_close(ntk_relu(X, depth=depth).diagonal(), (depth + 1) * sq)
    torch.testing.assert_close(nngp_relu(X, depth=depth).diagonal(), sq)
    s = 2.5
    torch.testing.assert_close(ntk_relu(s * X, Y, depth=depth), s * ntk_relu(X, Y, depth=depth))
    torch.testing.assert_close(nngp_relu(X, s * Y, depth=depth), s * nngp_relu(X, Y, depth=depth))


def test_kernels_are_symmetric_psd_and_numpy_in_numpy_out(np_rng):
    X = np_rng.standard_normal((8, 4))
    for k in (ntk_relu, nngp_relu):
        K = k(X, depth=2)
        assert isinstance(K, np.ndarray)
        np.testing.assert_allclose(K, K.T, atol=1e-12)
        assert np.linalg.eigvalsh(K).min() > -1e-9


def test_oracle_zero_rows_give_zero_kernel(torch_generator):
    X = torch.randn(3, 4, dtype=f64, generator=torch_generator)
    X[1] = 0
    K = ntk_relu(X, depth=2)
    assert torch.all(K[1] == 0) and torch.isfinite(K).all()


def test_oracle_rejects_bad_depth_value():
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        ntk_relu(torch.ones(2, 2), depth=0)


def test_oracle_rejects_non_int_depth():
    with pytest.raises(TypeError, match="depth must be an int"):
        nngp_relu(torch.ones(2, 2), depth=1.5)


def test_oracle_rejects_mismatched_feature_dims():
    with pytest.raises(ValueError, match=r"Y must have the trailing shape \[3\] of X, got \[2\]"):
        ntk_relu(torch.ones(2, 3), torch.ones(2, 2))


def test_oracle_rejects_wrong_rank():
    with pytest.raises(ValueError, match="X must have 2 dimensions"):
        ntk_relu(torch.ones(2, 3, 1))


def test_oracle_rejects_nan():
    X = torch.ones(2, 3)
    X[0, 0] = float("nan")
    with pytest.raises(ValueError, match="X must be finite"):
        nngp_relu(X)


def test_oracle_rejects_integer_dtype():
    with pytest.raises(TypeError, match="X must have dtype"):
        ntk_relu(torch.ones(2, 3, dtype=torch.int64))


# ----------------------------------------------------------------------------- power-series sketch

from sklearn.utils.estimator_checks import parametrize_with_checks

from kernelsketch.features._powerseries import (
    PowerSeriesSketch,
    fit_nonnegative_polynomial,
)
from kernelsketch.features.ntk import (
    NTKRandomFeatureMap,
    NTKRandomFeatures,
    NTKSketch,
    relu_ntk_of_cosine,
)


def _rel_fro(Z, K):
    Z, K = np.asarray(Z, dtype=np.float64), np.asarray(K, dtype=np.float64)
    return np.linalg.norm(Z @ Z.T - K) / np.linalg.norm(K)


def test_exponential_kernel_degree16_via_polysketch(torch_generator):
    X = _unit_rows(32, 8, torch_generator)
    K = torch.exp(X @ X.T)
    w = torch.tensor([1 / math.sqrt(math.factorial(j)) for j in range(17)], dtype=f64)
    errs = {m: [] for m in (64, 1024)}
    for m, found in errs.items():
        for seed in range(3):
            g = torch.Generator().manual_seed(seed)
            ps = PowerSeriesSketch(8, 16, m, poly_dim=2 * m, generator=g)
            found.append(_rel_fro(ps(X, w), K))
    # 1024 output features from per-power sketches of 2048 (single draws measured 0.08-0.11;
    # with poly_dim = 1024 they range 0.10-0.20).
    assert max(errs[1024]) <= 0.15
    assert max(errs[1024]) < min(errs[64]) / 2


def test_power_series_sketch_is_unbiased(torch_generator):
    X = _unit_rows(6, 4, torch_generator)
    c = torch.tensor([0.5, 1.0, 0.0, 0.25], dtype=f64)
    want = sum(c[j] * (X @ X.T) ** j for j in range(4))
    reps = 100
    acc = torch.zeros(6, 6, dtype=f64)
    sq = torch.zeros(6, 6, dtype=f64)
    for seed in range(reps):
        Z = PowerSeriesSketch(4, 3, 32, poly_dim=32, generator=torch.Generator().manual_seed(seed))(
            X, c.sqrt()
        )
        A = Z @ Z.T
        acc += A / reps
        sq += A * A / reps
    se = ((sq - acc * acc) / reps).sqrt()
    assert torch.all((acc - want).abs() <= 5 * se + 1e-9)


def test_nonnegative_fit_is_close_and_cached():
    c = fit_nonnegative_polynomial(("test-ntk", 2), lambda t: relu_ntk_of_cosine(t, 2), 12)
    assert torch.all(c >= 0)
    t = torch.linspace(-1, 1, 301, dtype=f64)
    fit = sum(c[j] * t**j for j in range(13))
    assert (fit - relu_ntk_of_cosine(t, 2)).abs().max() < 0.05 * 3
    # The cache keys on (key, degree): a different function under the same key is not refitted.
    again = fit_nonnegative_polynomial(("test-ntk", 2), lambda t: t * 0, 12)
    assert torch.equal(c, again)


# ----------------------------------------------------------------------------- transformers


@parametrize_with_checks(
    [
        NTKRandomFeatures(
            n_components=8, depth=2, tensor_sketch="countsketch", leverage_sampling=True
        ),
        NTKSketch(n_components=8, degree=3),
    ]
)
def test_sklearn_conventions(estimator, check):
    check(estimator)


@pytest.mark.parametrize("cls", [NTKRandomFeatures, NTKSketch])
@pytest.mark.parametrize("kernel", ["ntk", "nngp"])
def test_error_falls_with_n_components_and_is_small_at_1024(cls, kernel, torch_generator):
    X = _unit_rows(48, 8, torch_generator).numpy()
    K = (ntk_relu if kernel == "ntk" else nngp_relu)(X, depth=1)
    errs = [
        _rel_fro(cls(n_components=m, kernel=kernel, random_state=0).fit_transform(X), K)
        for m in (64, 1024)
    ]
    assert errs[1] <= 0.2
    assert errs[1] < errs[0] / 2


def test_deeper_ntk_random_features_error_falls(torch_generator):
    X = _unit_rows(32, 8, torch_generator).numpy()
    K = ntk_relu(X, depth=3)
    errs = [
        _rel_fro(NTKRandomFeatures(depth=3, n_components=m, random_state=1).fit_transform(X), K)
        for m in (64, 1024)
    ]
    assert errs[1] < 0.3 and errs[1] < errs[0] / 2


def test_depth1_ntk_random_features_are_unbiased(torch_generator):
    X = _unit_rows(5, 4, torch_generator)
    K = ntk_relu(X, depth=1)
    reps = 200
    acc = torch.zeros(5, 5, dtype=f64)
    sq = torch.zeros(5, 5, dtype=f64)
    for seed in range(reps):
        g = torch.Generator().manual_seed(seed)
        mp = NTKRandomFeatureMap(4, depth=1, n_arccos=16, d_out=16, kernel="ntk", generator=g)
        A = mp(X) @ mp(X).T
        acc += A / reps
        sq += A * A / reps
    se = ((sq - acc * acc) / reps).sqrt()
    assert torch.all((acc - K).abs() <= 5 * se + 1e-9)


@pytest.mark.parametrize("cls", [NTKRandomFeatures, NTKSketch])
def test_features_are_homogeneous_off_the_sphere(cls, np_rng):
    X = np_rng.standard_normal((6, 5))
    est = cls(n_components=32, random_state=0).fit(X)
    np.testing.assert_allclose(
        est.transform(3.0 * X), 3.0 * est.transform(X), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("cls", [NTKRandomFeatures, NTKSketch])
def test_float32_preserved_determinism_and_torch_map(cls, np_rng):
    X = np_rng.standard_normal((7, 5)).astype(np.float32)
    a = cls(n_components=32, random_state=4).fit(X)
    b = cls(n_components=32, random_state=4).fit(X)
    Za = a.transform(X)
    assert Za.dtype == np.float32 and Za.shape == (7, 32)
    np.testing.assert_array_equal(Za, b.transform(X))
    assert not np.allclose(Za, cls(n_components=32, random_state=5).fit_transform(X))
    batch = torch.from_numpy(X).reshape(7, 1, 5).expand(7, 3, 5)  # any leading shape
    Zt = a.feature_map_(batch)
    torch.testing.assert_close(Zt[:, 2], torch.from_numpy(Za))


@pytest.mark.parametrize(
    "params, exc, msg",
    [
        ({"depth": 0}, ValueError, "depth must be >= 1, got 0"),
        ({"n_components": 0}, ValueError, "n_components must be >= 1, got 0"),
        ({"kernel": "cntk"}, ValueError, "kernel must be one of"),
        ({"tensor_sketch": "gaussian"}, ValueError, "tensor_sketch must be one of"),
        ({"n_arccos": 0}, ValueError, "n_arccos must be >= 1, got 0"),
        (
            {"n_arccos": 8, "kernel": "nngp"},
            ValueError,
            "n_arccos must be None or n_components=256",
        ),
        ({"depth": "2"}, TypeError, "depth must be an int"),
    ],
)
def test_ntk_random_features_bad_params(params, exc, msg):
    with pytest.raises(exc, match=msg):
        NTKRandomFeatures(**params).fit(np.ones((3, 2)))


@pytest.mark.parametrize(
    "params, exc, msg",
    [
        ({"degree": 0}, ValueError, "degree must be >= 1, got 0"),
        ({"degree": 100}, ValueError, "degree must be <= 64, got 100"),
        ({"poly_dim": 0}, ValueError, "poly_dim must be >= 1, got 0"),
        ({"n_components": 0}, ValueError, "n_components must be >= 1, got 0"),
        ({"kernel": "rbf"}, ValueError, "kernel must be one of"),
    ],
)
def test_ntk_sketch_bad_params(params, exc, msg):
    with pytest.raises(exc, match=msg):
        NTKSketch(**params).fit(np.ones((3, 2)))


def test_transform_rejects_wrong_feature_count():
    est = NTKSketch(n_components=8, degree=2, random_state=0).fit(np.ones((3, 4)))
    with pytest.raises(ValueError, match="X has 3 features, but NTKSketch is expecting 4"):
        est.transform(np.ones((2, 3)))


# ----------------------------------------------------------------------------- leverage-score sampling


def test_leverage_sampled_first_layer_is_unbiased(torch_generator):
    X = _unit_rows(6, 4, torch_generator)
    X[:3] = X[0] + 0.05 * X[:3]  # a tight cluster, where leverage scores are far from uniform
    K = nngp_relu(X, depth=1)
    reps = 150
    acc, sq = torch.zeros(6, 6, dtype=f64), torch.zeros(6, 6, dtype=f64)
    for seed in range(reps):
        g = torch.Generator().manual_seed(seed)
        mp = NTKRandomFeatureMap(
            4, depth=1, n_arccos=16, d_out=16, kernel="nngp", generator=g, leverage_data=X
        )
        A = mp(X) @ mp(X).T
        acc += A / reps
        sq += A * A / reps
    se = ((sq - acc * acc) / reps).sqrt()
    assert torch.all((acc - K).abs() <= 5 * se + 1e-9)


def test_leverage_sampling_transformer_error_falls_and_is_deterministic(torch_generator):
    X = _unit_rows(40, 6, torch_generator).numpy()
    K = ntk_relu(X, depth=1)
    errs = [
        _rel_fro(
            NTKRandomFeatures(n_components=m, leverage_sampling=True, random_state=0).fit_transform(
                X
            ),
            K,
        )
        for m in (32, 512)
    ]
    assert errs[1] < errs[0] / 2
    a = (
        NTKRandomFeatures(n_components=16, leverage_sampling=True, random_state=3)
        .fit(X)
        .transform(X)
    )
    b = (
        NTKRandomFeatures(n_components=16, leverage_sampling=True, random_state=3)
        .fit(X)
        .transform(X)
    )
    np.testing.assert_array_equal(a, b)


def test_leverage_sampling_rejects_non_bool():
    with pytest.raises(ValueError, match="leverage_sampling must be one of"):
        NTKRandomFeatures(leverage_sampling="yes").fit(np.ones((3, 2)))
