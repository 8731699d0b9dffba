"""Fully-connected ReLU NTK / NNGP: exact oracles, NTKRandomFeatures and NTKSketch."""

import math

import numpy as np
import pytest
import torch

from kernelsketch.features import dual_activation
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


def test_oracles_take_inputs_of_any_magnitude(torch_generator):
    X = torch.randn(4, 3, dtype=f64, generator=torch_generator)
    K = ntk_relu(X, depth=2)
    torch.testing.assert_close(ntk_relu(X * 1e150, depth=2) / 1e300, K)
    torch.testing.assert_close(nngp_relu(X * 1e-150, depth=2) * 1e300, nngp_relu(X, depth=2))
    with pytest.raises(ValueError, match="X's scale overflows the kernel in float64"):
        ntk_relu(X * 1e200)


# ----------------------------------------------------------------------------- power-series sketch

from sklearn.utils.estimator_checks import parametrize_with_checks

from kernelsketch.features import neural_kernel
from kernelsketch.features._horner import HornerSketch
from kernelsketch.features._powerseries import fit_nonnegative_polynomial
from kernelsketch.features.activations import ACTIVATIONS
from kernelsketch.features.ntk import (
    NTKRandomFeatureMap,
    NTKRandomFeatures,
    NTKSketch,
    zonal_function,
)


def _rel_fro(Z, K):
    Z, K = np.asarray(Z, dtype=np.float64), np.asarray(K, dtype=np.float64)
    return np.linalg.norm(Z @ Z.T - K) / np.linalg.norm(K)


def _relu_ntk_of_cosine(depth):
    return zonal_function(ACTIVATIONS["relu"], depth, "ntk", 2.0, "ntk")


def test_zonal_function_is_the_relu_ntk_of_unit_inputs(torch_generator):
    X = _unit_rows(6, 4, torch_generator)
    torch.testing.assert_close(_relu_ntk_of_cosine(2)(X @ X.T), ntk_relu(X, depth=2))


@pytest.mark.statistical
def test_exponential_kernel_degree16_via_the_horner_chain(seed, measure):
    # exp(<x, y>) = sum_j <x, y>^j / j!: the mean error of 3 draws at m = 64 and m = 1024.
    # Measured over 150 seed offsets (tools/stat_runs.py): error at 1024 mean 0.071, max 0.11
    # (log sd 0.11: 0.15 is 6.9 sd above the mean); ratio mean 4.2, min 2.8 (log mean 1.43,
    # log sd 0.14: 2 is 5.1 sd below, P < 2e-7).
    X = _unit_rows(32, 8, torch.Generator().manual_seed(seed))
    K = torch.exp(X @ X.T)
    w = torch.tensor([1 / math.sqrt(math.factorial(j)) for j in range(17)], dtype=f64)
    errs = [np.mean([_rel_fro(HornerSketch(8, 16, m, seed=seed + 100 * m + i)(X, w), K)
                     for i in range(3)]) for m in (64, 1024)]
    measure("err_1024", errs[1])
    measure("ratio", errs[0] / errs[1])
    assert errs[1] <= 0.15 and errs[0] / errs[1] >= 2


@pytest.mark.statistical
def test_horner_chain_is_unbiased_for_signed_per_sample_weights(seed, measure):
    # Per-sample weights of both signs (radial factors); 36 entries within 7 standard errors
    # of 100 draws (Student t, 99 degrees of freedom: P(fail) < 36 * 3e-10 per run).
    X = _unit_rows(6, 4, torch.Generator().manual_seed(seed))
    c = torch.tensor([0.5, 1.0, 0.0, 0.25], dtype=f64)
    weights = c.sqrt() * torch.tensor([[1.0], [-0.5], [2.0], [0.3], [1.5], [-1.0]],
                                      dtype=f64) ** torch.arange(4)
    want = sum(weights[:, j, None] * weights[None, :, j] * (X @ X.T) ** j for j in range(4))
    reps = 100
    acc = torch.zeros(6, 6, dtype=f64)
    sq = torch.zeros(6, 6, dtype=f64)
    for i in range(reps):
        Z = HornerSketch(4, 3, 32, generator=torch.Generator().manual_seed(seed * 1000 + i))(
            X, weights)
        A = Z @ Z.T
        acc += A / reps
        sq += A * A / reps
    se = ((sq - acc * acc) / reps).sqrt()
    measure("max_z", ((acc - want).abs() / se).max().item())
    assert torch.all((acc - want).abs() <= 7 * se + 1e-9)


def test_nonnegative_fit_is_close_and_cached():
    f = _relu_ntk_of_cosine(2)
    c = fit_nonnegative_polynomial(("test-ntk", 2), f, 12)
    assert torch.all(c >= 0)
    t = torch.linspace(-1, 1, 301, dtype=f64)
    fit = sum(c[j] * t**j for j in range(13))
    assert (fit - f(t)).abs().max() < 0.05 * 3
    # The cache keys on (key, degree): a different function under the same key is not refitted.
    again = fit_nonnegative_polynomial(("test-ntk", 2), lambda t: t * 0, 12)
    assert torch.equal(c, again)


# ----------------------------------------------------------------------------- transformers


@parametrize_with_checks(
    [
        NTKRandomFeatures(
            n_components=8, depth=2, tensor_sketch="countsketch", leverage_sampling=True
        ),
        NTKRandomFeatures(activation="tanh", bias_std=0.5, parameterization="standard",
                          n_components=8, depth=2),
        NTKSketch(n_components=8, degree=3),
        NTKSketch(activation="leaky_relu", kernel="nngp", n_components=8, degree=3),
    ]
)
def test_sklearn_conventions(estimator, check):
    check(estimator)


TRANSFORMER_CASES = {
    "rf-relu-ntk": (NTKRandomFeatures, {"kernel": "ntk"}),
    "rf-relu-nngp": (NTKRandomFeatures, {"kernel": "nngp"}),
    "rf-tanh-ntk-bias": (NTKRandomFeatures, {"activation": "tanh", "bias_std": 0.5,
                                             "weight_std": 1.5}),
    "rf-gelu-standard": (NTKRandomFeatures, {"activation": "gelu", "depth": 2,
                                             "parameterization": "standard"}),
    "rf-relu-depth3": (NTKRandomFeatures, {"depth": 3}),
    "sketch-relu-ntk": (NTKSketch, {"kernel": "ntk"}),
    "sketch-relu-nngp": (NTKSketch, {"kernel": "nngp"}),
    "sketch-abs-depth2": (NTKSketch, {"activation": "abs", "depth": 2, "weight_std": 1.4}),
    "sketch-relu-standard": (NTKSketch, {"parameterization": "standard", "depth": 2}),
}


@pytest.mark.statistical
@pytest.mark.parametrize("case", list(TRANSFORMER_CASES))
def test_error_falls_with_n_components(case, seed, measure):
    # One draw at m = 64 and one at m = 1024 (error ratio ~ 4 expected). Measured over 200
    # seed offsets: error at 1024 0.06-0.18 (max 0.27), ratio mean 3.0-4.3 (min 1.7); the
    # bounds 0.4 and 1.3 are beyond those tails (< 1e-6).
    cls, kw = TRANSFORMER_CASES[case]
    X = _unit_rows(48, 8, torch.Generator().manual_seed(seed)).numpy() * math.sqrt(8)
    K = neural_kernel(X, **{"kernel": "ntk", **kw})
    errs = [_rel_fro(cls(n_components=m, random_state=seed + i, **kw).fit_transform(X), K)
            for i, m in enumerate((64, 1024))]
    measure("err_1024", errs[1])
    measure("ratio", errs[0] / errs[1])
    assert errs[1] <= 0.4 and errs[0] / errs[1] >= 1.3, errs


@pytest.mark.statistical
@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_depth1_ntk_random_features_are_unbiased(activation, seed, measure):
    # With weight and bias variances; 25 entries within 6 standard errors of 200 draws.
    X = _unit_rows(5, 4, torch.Generator().manual_seed(seed)) * 1.5
    kw = {"weight_var": 1.7**2, "bias_var": 0.5**2}
    K = neural_kernel(X, activation=activation, weight_std=1.7, bias_std=0.5)
    reps = 200
    acc = torch.zeros(5, 5, dtype=f64)
    sq = torch.zeros(5, 5, dtype=f64)
    for i in range(reps):
        g = torch.Generator().manual_seed(seed * 1000 + i)
        mp = NTKRandomFeatureMap(4, depth=1, n_arccos=16, d_out=16, kernel="ntk",
                                 activation=ACTIVATIONS[activation], generator=g, **kw)
        A = mp(X) @ mp(X).T
        acc += A / reps
        sq += A * A / reps
    se = ((sq - acc * acc) / reps).sqrt()
    measure("max_z", ((acc - K).abs() / se).max().item())
    assert torch.all((acc - K).abs() <= 6 * se + 1e-9)


@pytest.mark.parametrize("cls", [NTKRandomFeatures, NTKSketch])
def test_features_are_homogeneous_off_the_sphere(cls, np_rng):
    X = np_rng.standard_normal((6, 5))
    est = cls(n_components=32, random_state=0).fit(X)
    np.testing.assert_allclose(
        est.transform(3.0 * X), 3.0 * est.transform(X), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("cls", [NTKRandomFeatures, NTKSketch])
def test_huge_float32_inputs_give_finite_homogeneous_features(cls, np_rng):
    X = np_rng.standard_normal((6, 5)).astype(np.float32)
    est = cls(n_components=32, random_state=0).fit(X)
    Z = est.transform(X * 1e20)
    assert Z.dtype == np.float32 and np.isfinite(Z).all()
    np.testing.assert_allclose(Z / 1e20, est.transform(X), rtol=1e-4, atol=1e-5)


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


@pytest.mark.parametrize("cls", [NTKRandomFeatures, NTKSketch])
def test_verbose_transform_equals_the_quiet_one(cls, np_rng, capsys):
    X = np_rng.standard_normal((700, 5))
    quiet = cls(n_components=16, random_state=1).fit(X).transform(X)
    loud = cls(n_components=16, random_state=1, verbose=2).fit(X).transform(X)
    np.testing.assert_allclose(loud, quiet, rtol=1e-12, atol=1e-12)
    assert f"{cls.__name__}.transform" in capsys.readouterr().err


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
        ({"activation": "swish"}, ValueError, "activation must be one of"),
        ({"weight_std": -0.1}, ValueError, "weight_std must be >= 0.0"),
        ({"bias_std": float("inf")}, ValueError, "bias_std must be finite"),
        ({"parameterization": "mup"}, ValueError, "parameterization must be one of"),
        ({"verbose": -1}, ValueError, "verbose must be >= 0"),
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
        ({"n_components": 0}, ValueError, "n_components must be >= 1, got 0"),
        ({"kernel": "rbf"}, ValueError, "kernel must be one of"),
        ({"activation": "erf"}, ValueError, "NTKSketch needs a kernel .* ReLU-family activation"),
        ({"bias_std": 0.1}, ValueError, "NTKSketch needs .* bias_std=0"),
        ({"activation": np.tanh}, ValueError, "NTKSketch needs a kernel"),
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


@pytest.mark.statistical
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_leverage_sampled_first_layer_is_unbiased(activation, seed, measure):
    # 36 entries within 6 standard errors of 150 draws (P(fail) < 36 * 2e-9 per run).
    X = _unit_rows(6, 4, torch.Generator().manual_seed(seed)) * 2.0
    X[:3] = X[0] + 0.05 * X[:3]  # a tight cluster, where leverage scores are far from uniform
    K = neural_kernel(X, activation=activation, kernel="nngp", bias_std=0.3)
    reps = 150
    acc, sq = torch.zeros(6, 6, dtype=f64), torch.zeros(6, 6, dtype=f64)
    for i in range(reps):
        g = torch.Generator().manual_seed(seed * 1000 + i)
        mp = NTKRandomFeatureMap(4, depth=1, n_arccos=16, d_out=16, kernel="nngp",
                                 activation=ACTIVATIONS[activation], bias_var=0.09,
                                 generator=g, leverage_data=X)
        A = mp(X) @ mp(X).T
        acc += A / reps
        sq += A * A / reps
    se = ((sq - acc * acc) / reps).sqrt()
    measure("max_z", ((acc - K).abs() / se).max().item())
    assert torch.all((acc - K).abs() <= 6 * se + 1e-9)


@pytest.mark.statistical
def test_leverage_sampling_transformer_error_falls_and_is_deterministic(seed, measure):
    X = _unit_rows(40, 6, torch.Generator().manual_seed(seed)).numpy()
    K = neural_kernel(X)
    errs = [
        _rel_fro(NTKRandomFeatures(n_components=m, leverage_sampling=True,
                                   random_state=seed + i).fit_transform(X), K)
        for i, m in enumerate((32, 512))
    ]
    measure("ratio", errs[0] / errs[1])
    assert errs[1] < errs[0] / 2
    a = NTKRandomFeatures(n_components=16, leverage_sampling=True, random_state=3).fit(X)
    b = NTKRandomFeatures(n_components=16, leverage_sampling=True, random_state=3).fit(X)
    np.testing.assert_array_equal(a.transform(X), b.transform(X))


def test_leverage_sampling_rejects_non_bool():
    with pytest.raises(ValueError, match="leverage_sampling must be one of"):
        NTKRandomFeatures(leverage_sampling="yes").fit(np.ones((3, 2)))
