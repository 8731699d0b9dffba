"""Activations: closed-form duals, quadrature, Hermite coefficients and ActivationKernelSketch."""

import math

import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from kernelsketch.features import (
    ACTIVATIONS,
    ActivationKernelSketch,
    dual_activation,
    hermite_coefficients,
    neural_kernel,
    piecewise_linear,
    relu_hermite_coefficients,
)
from kernelsketch.features.activations import (
    ActivationSketchMap,
    dual_pair,
    radial_coefficients,
    resolve_activation,
)

f64 = torch.float64
CLOSED = {name: act for name, act in ACTIVATIONS.items() if act.dual is not None}
CLOSED["piecewise_linear(0.5, -2)"] = piecewise_linear(0.5, -2.0)


def _rows_of_norms(norms, d, generator):
    X = torch.randn(len(norms), d, dtype=f64, generator=generator)
    return X / X.norm(dim=1, keepdim=True) * torch.tensor(norms, dtype=f64)[:, None]


# ----------------------------------------------------------------------------- closed forms


@pytest.mark.statistical
@pytest.mark.parametrize("name", list(CLOSED))
def test_closed_form_duals_match_monte_carlo(name, seed, measure):
    # E[sigma(u) sigma(v)] and E[sigma'(u) sigma'(v)] against 400k Gaussian samples, off the sphere.
    # 32 comparisons per test within 6 standard errors: P(fail) < 32 * 2e-9 per run.
    act = CLOSED[name]
    X = _rows_of_norms([0.3, 0.8, 1.5, 2.5], 3, torch.Generator().manual_seed(seed))
    n = 400_000
    w = torch.randn(3, n, generator=torch.Generator().manual_seed(seed + 1), dtype=f64)
    a = (X * X).sum(1)
    c = X @ X.T
    c.diagonal().copy_(a)  # correlation exactly 1 on the diagonal (ill-conditioned for kinks)
    for fn, closed in ((act.fn, act.dual), (act.grad, act.derivative_dual)):
        s = fn(X @ w)
        prod = s[:, None, :] * s[None, :, :]
        mc, se = prod.mean(-1), prod.std(-1) / math.sqrt(n)
        K = closed(a[:, None], a[None, :], c)
        z = measure("max_z", ((K - mc).abs() / (se + 1e-300)).max().item())
        assert torch.all((K - mc).abs() <= 6 * se + 1e-12), z


def test_derivative_duals_are_the_derivatives_of_the_duals_in_c(torch_generator):
    # Price's theorem: d/dc E[sigma(u) sigma(v)] = E[sigma'(u) sigma'(v)].
    a = 0.2 + torch.rand(6, dtype=f64, generator=torch_generator) * 3
    b = 0.2 + torch.rand(6, dtype=f64, generator=torch_generator) * 3
    c = (2 * torch.rand(6, dtype=f64, generator=torch_generator) - 1) * 0.9 * (a * b).sqrt()
    h = 1e-6
    for name, act in CLOSED.items():
        if name == "step":  # its derivative is 0 almost everywhere, not the delta of Price's theorem
            continue
        numeric = (act.dual(a, b, c + h) - act.dual(a, b, c - h)) / (2 * h)
        torch.testing.assert_close(act.derivative_dual(a, b, c), numeric, rtol=1e-6, atol=1e-8,
                                   msg=name)


# ----------------------------------------------------------------------------- quadrature


@pytest.mark.parametrize("name", ["erf", "gaussian", "gelu"])
def test_quadrature_is_within_1e_8_of_the_closed_forms_up_to_norm_10(name, torch_generator):
    # The old 64-node Gauss-Hermite rule was 0.906 against 0.874 for erf at norm 5.
    X = _rows_of_norms([0.1, 1.0, 3.0, 5.0, 7.5, 10.0], 4, torch_generator)
    Y = _rows_of_norms([10.0, 5.0, 0.5], 4, torch_generator)
    for derivative in (False, True):
        act = ACTIVATIONS[name]
        a, b, c = (X * X).sum(1)[:, None], (Y * Y).sum(1)[None, :], X @ Y.T
        exact = (act.derivative_dual if derivative else act.dual)(a, b, c)
        got = dual_pair(act, a, b, c, derivative=True, method="quadrature", tol=1e-10)[derivative]
        assert (got - exact).abs().max() <= 1e-8, (derivative, got - exact)
    torch.testing.assert_close(dual_activation(name, X, Y, method="quadrature"),
                               dual_activation(name, X, Y), rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", ["relu", "abs", "leaky_relu", "step", "sin"])
def test_quadrature_resolves_kinks_and_oscillations(name, torch_generator):
    X = _rows_of_norms([0.2, 1.0, 4.0, 8.0], 3, torch_generator)
    scale = dual_activation(name, X).abs().max()
    got = dual_activation(name, X, method="quadrature")
    assert (got - dual_activation(name, X)).abs().max() <= 1e-8 * max(scale, 1.0)


def test_quadrature_raises_where_it_cannot_reach_tol(torch_generator):
    X = _rows_of_norms([1.0, 2.0], 3, torch_generator)
    with pytest.raises(ValueError, match="quadrature .* did not reach tol=1e-10"):
        dual_activation(lambda z: torch.abs(z - 0.3), X, method="quadrature")


@pytest.mark.parametrize("name", ["erf", "gelu", "sin", "gaussian", "cos"])
def test_hermite_series_of_a_callable_matches_the_closed_form(name, torch_generator):
    X = _rows_of_norms([0.3, 1.0, 2.0, 3.0], 3, torch_generator)
    fn = ACTIVATIONS[name].fn
    got = dual_activation(lambda z: fn(z), X, method="hermite")
    assert (got - dual_activation(name, X)).abs().max() <= 1e-9


def test_hermite_series_raises_where_its_tail_bound_fails(torch_generator):
    # erf at norm 10: the series needs ~4000 terms at correlation 0.99.
    X = _rows_of_norms([10.0, 10.0], 3, torch_generator)
    X[1] = X[0] + 0.1 * X[1] / 10
    with pytest.raises(ValueError, match="Hermite series .* does not reach tol"):
        dual_activation(lambda z: torch.erf(z), X, method="hermite")
    # method="auto" falls back to the quadrature there.
    torch.testing.assert_close(dual_activation(lambda z: torch.erf(z), X),
                               dual_activation("erf", X), rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------- Hermite coefficients


def test_relu_hermite_coefficients_match_closed_form():
    # Degree 300: beyond 170, i! no longer fits a float64 (the closed form works in logs).
    a = relu_hermite_coefficients(300)
    b = hermite_coefficients("relu", 300)
    sqrt_factorials = torch.tensor([math.exp(math.lgamma(i + 1) / 2) for i in range(301)],
                                   dtype=f64)
    torch.testing.assert_close(b, a * sqrt_factorials, rtol=0, atol=1e-13)


def test_relu_hermite_closed_form_first_terms():
    a = relu_hermite_coefficients(4)
    r = 1 / math.sqrt(2 * math.pi)
    torch.testing.assert_close(a, torch.tensor([r, 0.5, r / 2, 0.0, -r / 24], dtype=f64))


@pytest.mark.parametrize("name", ["gelu", "erf", "sin", "cos", "gaussian", "tanh"])
def test_derivative_coefficients_follow_from_steins_identity(name):
    # E[s'(rg) He_i(g)] = E[s(rg) He_{i+1}(g)] / r: b'_i(r) = sqrt(i + 1) b_{i+1}(r) / r.
    r = torch.tensor([0.5, 2.0, 6.0], dtype=f64)
    b = hermite_coefficients(name, 41, radius=r)
    db = hermite_coefficients(name, 40, radius=r, derivative=True)
    want = b[:, 1:] * torch.arange(1, 42, dtype=f64).sqrt() / r[:, None]
    torch.testing.assert_close(db, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["gelu", "erf", "sin", "gaussian"])
def test_hermite_series_with_radial_factors_reproduces_the_dual(name, torch_generator):
    X = _rows_of_norms([0.2, 0.7, 1.0, 1.5], 4, torch_generator)
    r = X.norm(dim=1)
    b = hermite_coefficients(name, 200, radius=r)
    t = (X / r[:, None]) @ (X / r[:, None]).T
    K = sum(b[:, i, None] * b[None, :, i] * t**i for i in range(201))
    torch.testing.assert_close(K, dual_activation(name, X), rtol=0, atol=1e-10)


def test_hermite_coefficients_at_huge_radius_are_those_of_the_sign():
    # erf(r g) -> sign(g) as r -> inf; sign's odd coefficients are known: b_1 = sqrt(2/pi).
    b = hermite_coefficients("erf", 3, radius=1e12)
    torch.testing.assert_close(b[:2], torch.tensor([0.0, math.sqrt(2 / math.pi)], dtype=f64),
                               rtol=0, atol=1e-10)


def test_folded_radial_coefficients_are_exact_at_correlations_one_and_minus_one():
    r = torch.tensor([0.3, 1.0, 4.0], dtype=f64)
    signs = torch.tensor([(-1.0) ** i for i in range(5)], dtype=f64)
    for name in ("relu", "tanh", "erf", "gelu", "cos"):
        act = ACTIVATIONS[name]
        for derivative in (False, True):
            b = radial_coefficients(act, r, 4, derivative=derivative)
            a = r * r
            for rho in (1.0, -1.0):
                exact = dual_pair(act, a, a, rho * a, derivative=True, method="hermite",
                                  tol=1e-15)[derivative]  # |rho| = 1: 1-D integrals
                series = (b * b * (signs if rho < 0 else 1.0)).sum(-1)
                torch.testing.assert_close(series, exact, rtol=1e-10, atol=1e-10,
                                           msg=f"{name} {derivative} {rho}")


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, exc, msg",
    [
        (lambda: dual_activation("tanhh", torch.ones(2, 2)), ValueError, "activation must be one of"),
        (lambda: dual_activation(3, torch.ones(2, 2)), TypeError,
         "activation must be one of .* or a callable, got int"),
        (lambda: dual_activation(torch.tanh, torch.ones(2, 2), method="closed_form"), ValueError,
         "method='closed_form' needs an activation with a closed-form dual"),
        (lambda: dual_activation("relu", torch.ones(2, 2), method="exact"), ValueError,
         "method must be one of"),
        (lambda: dual_activation(lambda z: z.sum(), torch.ones(2, 2)), ValueError,
         "activation must act elementwise"),
        (lambda: dual_activation("relu", torch.ones(2, 2), depth=0), ValueError,
         "depth must be >= 1, got 0"),
        (lambda: dual_activation("relu", torch.ones(2, 2), tol=-1.0), ValueError, "tol must be > 0"),
        (lambda: hermite_coefficients("relu", 3, radius=torch.tensor([1.0, -1.0])), ValueError,
         "radius must be >= 0"),
        (lambda: hermite_coefficients("relu", -1), ValueError, "degree must be >= 0, got -1"),
        (lambda: hermite_coefficients("relu", 2000), ValueError, "degree must be <= 512"),
        (lambda: hermite_coefficients("relu", 3, radius=float("inf")), ValueError,
         "radius must be finite"),
        (lambda: piecewise_linear(1.0, float("nan")), ValueError, "negative_slope must be finite"),
    ],
)
def test_bad_input_raises_clear_errors(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_resolve_activation_accepts_names_activations_and_callables():
    assert resolve_activation("erf") is ACTIVATIONS["erf"]
    act = piecewise_linear(2.0, 0.5)
    assert resolve_activation(act) is act
    wrapped = resolve_activation(torch.tanh)
    assert wrapped.dual is None and wrapped(torch.zeros(1)).item() == 0.0


# ----------------------------------------------------------------------------- ActivationKernelSketch


def _rel_fro(Z, K):
    Z, K = np.asarray(Z, dtype=np.float64), np.asarray(K, dtype=np.float64)
    return np.linalg.norm(Z @ Z.T - K) / np.linalg.norm(K)


@parametrize_with_checks(
    [
        ActivationKernelSketch(activation="gelu", depth=2, n_components=8, degree=2),
        ActivationKernelSketch(activation="tanh", kernel="ntk", bias_std=0.5, n_components=8,
                               degree=2),
    ]
)
def test_sklearn_conventions(estimator, check):
    check(estimator)


SKETCH_CASES = {
    "relu-nngp": {"activation": "relu", "kernel": "nngp"},
    "gelu-ntk": {"activation": "gelu", "kernel": "ntk", "depth": 2, "bias_std": 0.3},
    "tanh-ntk": {"activation": "tanh", "kernel": "ntk", "weight_std": 1.5, "bias_std": 0.5},
    "erf-standard": {"activation": "erf", "kernel": "ntk", "parameterization": "standard"},
}


@pytest.mark.statistical
@pytest.mark.parametrize("case", list(SKETCH_CASES))
def test_sketch_error_falls_with_n_components(case, seed, measure):
    # One draw at m = 64 and at m = 1024 (expected error ratio ~ 4). Measured over 200 seed
    # offsets: error at 1024 0.06-0.17 (max 0.26), ratio mean 3.3-4.2 (min 1.9). Bounds 0.4
    # and 1.3 are far beyond those tails (< 1e-6).
    kw = SKETCH_CASES[case]
    X = np.random.default_rng(seed).standard_normal((40, 8))
    K = neural_kernel(X, **kw)
    errs = [_rel_fro(ActivationKernelSketch(n_components=m, random_state=seed + i, **kw)
                     .fit_transform(X), K) for i, m in enumerate((64, 1024))]
    measure("err_1024", errs[1])
    measure("ratio", errs[0] / errs[1])
    assert errs[1] <= 0.4 and errs[0] / errs[1] >= 1.3, errs


@pytest.mark.statistical
@pytest.mark.parametrize("kernel", ["nngp", "ntk"])
def test_depth1_sketch_is_unbiased_for_the_folded_hermite_series(kernel, seed, measure):
    # At depth 1 the features' inner products average to weight_var * sum_i b_i(r) b_i(s) t^i
    # + bias_var (+ the derivative series times K^(0) for the NTK), b folded; 25 entries
    # within 6 standard errors of 150 draws (P(fail) < 25 * 2e-9).
    X = _rows_of_norms([0.4, 1.0, 1.7, 2.5, 3.0], 3, torch.Generator().manual_seed(seed))
    act, w, bias, degree = ACTIVATIONS["gelu"], 1.2, 0.7, 3
    iv = w**2 / 3
    a = iv * (X * X).sum(1) + bias**2
    c = iv * X @ X.T + bias**2
    t = c / (a.sqrt()[:, None] * a.sqrt()[None, :])
    series = []
    for derivative in (False, True):
        b = radial_coefficients(act, a.sqrt(), degree, derivative=derivative)
        series.append(sum(b[:, i, None] * b[None, :, i] * t**i for i in range(degree + 1)))
    want = w**2 * series[0] + bias**2
    if kernel == "ntk":
        want = want + w**2 * series[1] * c
    reps = 150
    acc, sq = torch.zeros(5, 5, dtype=f64), torch.zeros(5, 5, dtype=f64)
    for i in range(reps):
        mp = ActivationSketchMap(3, activation=act, depth=1, degree=degree, n_components=16,
                                 kernel=kernel, weight_var=w**2, bias_var=bias**2,
                                 generator=torch.Generator().manual_seed(seed * 1000 + i))
        A = mp(X) @ mp(X).T
        acc += A / reps
        sq += A * A / reps
    se = ((sq - acc * acc) / reps).sqrt()
    measure("max_z", ((acc - want).abs() / se).max().item())
    assert torch.all((acc - want).abs() <= 6 * se + 1e-9)


def test_sketch_features_are_finite_for_huge_float32_inputs(seed):
    X = np.random.default_rng(seed).standard_normal((6, 5)).astype(np.float32)
    for name in ("relu", "gelu", "erf"):
        est = ActivationKernelSketch(activation=name, kernel="ntk", n_components=16,
                                     random_state=seed).fit(X)
        Z = est.transform(X * 1e20)
        assert Z.dtype == np.float32 and np.isfinite(Z).all(), name
    # ReLU without bias is homogeneous: the features scale with the inputs.
    est = ActivationKernelSketch(n_components=16, random_state=seed).fit(X)
    np.testing.assert_allclose(est.transform(X * 1e20) / 1e20, est.transform(X), rtol=1e-4,
                               atol=1e-6)


def test_verbose_transform_is_the_same_in_blocks(seed):
    X = np.random.default_rng(seed).standard_normal((600, 4))
    quiet = ActivationKernelSketch(n_components=8, random_state=seed).fit(X)
    loud = ActivationKernelSketch(n_components=8, random_state=seed, verbose=1).fit(X)
    np.testing.assert_allclose(loud.transform(X), quiet.transform(X), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "params, exc, msg",
    [
        ({"activation": "swish"}, ValueError, "activation must be one of"),
        ({"activation": 1.0}, TypeError, "activation must be one of .* or a callable"),
        ({"degree": 0}, ValueError, "degree must be >= 1, got 0"),
        ({"depth": 0}, ValueError, "depth must be >= 1, got 0"),
        ({"n_components": 0}, ValueError, "n_components must be >= 1, got 0"),
        ({"kernel": "cntk"}, ValueError, "kernel must be one of"),
        ({"weight_std": -1.0}, ValueError, "weight_std must be >= 0.0"),
        ({"bias_std": float("nan")}, ValueError, "bias_std must be finite"),
        ({"parameterization": "mup"}, ValueError, "parameterization must be one of"),
        ({"verbose": -1}, ValueError, "verbose must be >= 0"),
    ],
)
def test_activation_sketch_bad_params(params, exc, msg):
    with pytest.raises(exc, match=msg):
        ActivationKernelSketch(**params).fit(np.ones((3, 2)))
