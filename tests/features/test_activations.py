"""Dual activations, Hermite coefficients and ActivationKernelSketch."""

import math

import numpy as np
import pytest
import torch

from kernelsketch.features.activations import (
    ACTIVATIONS,
    dual_activation,
    hermite_coefficients,
    relu_hermite_coefficients,
)

f64 = torch.float64
SMOOTH = ["gelu", "erf", "sin", "cos", "gaussian"]
KINKED = ["relu", "abs"]


def _sqrt_factorials(n):
    return torch.tensor([math.sqrt(math.factorial(i)) for i in range(n)], dtype=f64)


# ----------------------------------------------------------------------------- exact duals


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_closed_form_dual_matches_monte_carlo(name, torch_generator):
    g = torch.Generator().manual_seed(0)
    X = 0.7 * torch.randn(4, 3, dtype=f64, generator=torch_generator)  # off the sphere on purpose
    n = 400_000
    w = torch.randn(3, n, generator=g, dtype=f64)
    s = ACTIVATIONS[name](X @ w)  # [4, n]
    prod = s[:, None, :] * s[None, :, :]
    mc, se = prod.mean(-1), prod.std(-1) / math.sqrt(n)
    K = dual_activation(name, X)
    assert torch.all((K - mc).abs() <= 5 * se + 1e-12), (K, mc, se)


@pytest.mark.parametrize("name", SMOOTH)
def test_closed_form_dual_matches_quadrature_smooth(name, torch_generator):
    X, Y = 0.4 * torch.randn(5, 4, dtype=f64, generator=torch_generator), 0.4 * torch.randn(3, 4, dtype=f64, generator=torch_generator)
    torch.testing.assert_close(
        dual_activation(name, X, Y),
        dual_activation(name, X, Y, method="quadrature", n_nodes=80),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("name", KINKED)
def test_closed_form_dual_matches_quadrature_kinked(name, torch_generator):
    X = torch.randn(5, 4, dtype=f64, generator=torch_generator)
    exact = dual_activation(name, X)
    # Gauss-Hermite converges algebraically for kinks: the error must shrink with nodes.
    errs = [
        (dual_activation(name, X, method="quadrature", n_nodes=n) - exact).abs().max()
        for n in (10, 100)
    ]
    assert errs[1] < errs[0] / 5 and errs[1] < 5e-3 * exact.abs().max()


def test_quadrature_of_a_callable_matches_its_named_closed_form(torch_generator):
    X = torch.randn(4, 3, dtype=f64, generator=torch_generator)
    torch.testing.assert_close(
        dual_activation(lambda z: torch.sin(z), X), dual_activation("sin", X), rtol=1e-8, atol=1e-8
    )


def test_dual_is_numpy_for_numpy_input(np_rng):
    K = dual_activation("erf", np_rng.standard_normal((3, 2)))
    assert isinstance(K, np.ndarray) and K.shape == (3, 3)


# ----------------------------------------------------------------------------- Hermite coefficients


def test_relu_hermite_coefficients_match_closed_form():
    a = relu_hermite_coefficients(30)
    b = hermite_coefficients("relu", 30)
    torch.testing.assert_close(b, a * _sqrt_factorials(31), rtol=0, atol=1e-12)


def test_relu_hermite_closed_form_first_terms():
    a = relu_hermite_coefficients(4)
    want = torch.tensor(
        [
            1 / math.sqrt(2 * math.pi),
            0.5,
            1 / (2 * math.sqrt(2 * math.pi)),
            0.0,
            -1 / (24 * math.sqrt(2 * math.pi)),
        ],
        dtype=f64,
    )
    torch.testing.assert_close(a, want)


@pytest.mark.parametrize("name", SMOOTH)
def test_hermite_series_with_radial_factors_reproduces_dual(name, torch_generator):
    X = 0.4 * torch.randn(6, 4, dtype=f64, generator=torch_generator)
    r = X.norm(dim=1)
    b = hermite_coefficients(name, 40, radius=r)
    t = (X / r[:, None]) @ (X / r[:, None]).T
    K = sum(b[:, i, None] * b[None, :, i] * t**i for i in range(41))
    torch.testing.assert_close(K, dual_activation(name, X), rtol=1e-5, atol=1e-5)


def test_hermite_truncation_error_falls_with_degree_for_relu(torch_generator):
    X = torch.randn(6, 4, dtype=f64, generator=torch_generator)
    X = X / X.norm(dim=1, keepdim=True)
    t = X @ X.T
    exact = dual_activation("relu", X)
    errs = []
    for degree in (2, 8, 32):
        b = hermite_coefficients("relu", degree)
        errs.append((sum(b[i] ** 2 * t**i for i in range(degree + 1)) - exact).abs().max())
    assert errs[0] > errs[1] > errs[2]


def test_hermite_radius_tensor_shape():
    b = hermite_coefficients("gelu", 5, radius=torch.tensor([0.5, 1.0, 2.0], dtype=f64))
    assert b.shape == (3, 6)
    torch.testing.assert_close(b[1], hermite_coefficients("gelu", 5))


# ----------------------------------------------------------------------------- bad input


def test_dual_rejects_unknown_activation_name():
    with pytest.raises(ValueError, match="activation must be one of"):
        dual_activation("tanhh", torch.ones(2, 2))


def test_dual_rejects_non_callable_activation():
    with pytest.raises(TypeError, match="activation must be one of .* or a callable, got int"):
        dual_activation(3, torch.ones(2, 2))


def test_dual_rejects_closed_form_for_callable():
    with pytest.raises(ValueError, match="method='closed_form' needs a named activation"):
        dual_activation(torch.tanh, torch.ones(2, 2), method="closed_form")


def test_dual_rejects_bad_method():
    with pytest.raises(ValueError, match="method must be one of"):
        dual_activation("relu", torch.ones(2, 2), method="exact")


def test_dual_rejects_non_elementwise_callable():
    with pytest.raises(ValueError, match="activation must act elementwise"):
        dual_activation(lambda z: z.sum(), torch.ones(2, 2))


def test_dual_rejects_too_many_nodes():
    with pytest.raises(ValueError, match="n_nodes must be <= 200, got 500"):
        dual_activation("relu", torch.ones(2, 2), method="quadrature", n_nodes=500)


def test_hermite_rejects_negative_radius():
    with pytest.raises(ValueError, match="radius must be >= 0"):
        hermite_coefficients("relu", 3, radius=torch.tensor([1.0, -1.0]))


def test_hermite_rejects_negative_degree():
    with pytest.raises(ValueError, match="degree must be >= 0, got -1"):
        hermite_coefficients("relu", -1)


def test_depth2_relu_dual_is_a_quarter_of_the_relu_nngp(torch_generator):
    from kernelsketch.features.ntk import nngp_relu

    X = torch.randn(5, 3, dtype=f64, generator=torch_generator)
    # The NNGP uses sqrt(2) relu: each of the two layers contributes a factor 2.
    torch.testing.assert_close(dual_activation("relu", X, depth=2), nngp_relu(X, depth=2) / 4)


def test_depth2_quadrature_matches_closed_form(torch_generator):
    X = 0.5 * torch.randn(4, 3, dtype=f64, generator=torch_generator)
    torch.testing.assert_close(
        dual_activation("gelu", X, depth=2, method="quadrature", n_nodes=60),
        dual_activation("gelu", X, depth=2),
        rtol=1e-6,
        atol=1e-8,
    )


def test_dual_rejects_bad_depth():
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        dual_activation("relu", torch.ones(2, 2), depth=0)


# ----------------------------------------------------------------------------- ActivationKernelSketch

from sklearn.utils.estimator_checks import parametrize_with_checks

from kernelsketch.features.activations import ActivationKernelSketch, ActivationSketchMap


def _rel_fro(Z, K):
    Z, K = np.asarray(Z, dtype=np.float64), np.asarray(K, dtype=np.float64)
    return np.linalg.norm(Z @ Z.T - K) / np.linalg.norm(K)


@parametrize_with_checks(
    [
        ActivationKernelSketch(activation="gelu", depth=2, n_components=8, degree=2),
    ]
)
def test_sklearn_conventions(estimator, check):
    check(estimator)


@pytest.mark.parametrize("name", ["relu", "gelu"])
def test_sketch_error_falls_with_n_components_off_the_sphere(name):
    X = 0.6 * np.random.default_rng(0).standard_normal((40, 8))
    K = dual_activation(name, X)
    errs = [
        _rel_fro(
            ActivationKernelSketch(activation=name, n_components=m, random_state=0).fit_transform(
                X
            ),
            K,
        )
        for m in (64, 1024)
    ]
    assert errs[1] <= 0.2 and errs[1] < errs[0] / 2


def test_two_layer_sketch_error_falls():
    X = 0.6 * np.random.default_rng(1).standard_normal((32, 8))
    K = dual_activation("relu", X, depth=2)
    errs = [
        _rel_fro(
            ActivationKernelSketch(depth=2, n_components=m, random_state=0).fit_transform(X), K
        )
        for m in (64, 1024)
    ]
    assert errs[1] <= 0.25 and errs[1] < errs[0] / 1.5


def test_sketch_is_unbiased_for_the_truncated_hermite_series(torch_generator):
    X = 0.7 * torch.randn(5, 3, dtype=f64, generator=torch_generator)
    r = X.norm(dim=1)
    degree = 3
    b = hermite_coefficients("gelu", degree, radius=r)
    t = (X / r[:, None]) @ (X / r[:, None]).T
    want = sum(b[:, i, None] * b[None, :, i] * t**i for i in range(degree + 1))
    reps = 100
    acc, sq = torch.zeros(5, 5, dtype=f64), torch.zeros(5, 5, dtype=f64)
    for seed in range(reps):
        mp = ActivationSketchMap(
            3,
            activation=ACTIVATIONS["gelu"],
            depth=1,
            degree=degree,
            n_components=16,
            poly_dim=16,
            generator=torch.Generator().manual_seed(seed),
        )
        Z = mp(X)
        acc += Z @ Z.T / reps
        sq += (Z @ Z.T) ** 2 / reps
    se = ((sq - acc * acc) / reps).sqrt()
    assert torch.all((acc - want).abs() <= 5 * se + 1e-9)


def test_callable_activation_sketch_approaches_its_quadrature_dual():
    X = 0.5 * np.random.default_rng(2).standard_normal((24, 6))
    K = dual_activation(torch.tanh, X)
    errs = [
        _rel_fro(
            ActivationKernelSketch(
                activation=torch.tanh, n_components=m, random_state=0
            ).fit_transform(X),
            K,
        )
        for m in (128, 2048)
    ]
    # Odd activations have small off-diagonal kernels, so relative errors are larger.
    assert errs[1] <= 0.2 and errs[1] < errs[0] / 2


@pytest.mark.parametrize(
    "params, exc, msg",
    [
        ({"activation": "swish"}, ValueError, "activation must be one of"),
        ({"activation": 1.0}, TypeError, "activation must be one of .* or a callable"),
        ({"degree": 0}, ValueError, "degree must be >= 1, got 0"),
        ({"depth": 0}, ValueError, "depth must be >= 1, got 0"),
        ({"n_components": 0}, ValueError, "n_components must be >= 1, got 0"),
        ({"poly_dim": -1}, ValueError, "poly_dim must be >= 1, got -1"),
    ],
)
def test_activation_sketch_bad_params(params, exc, msg):
    with pytest.raises(exc, match=msg):
        ActivationKernelSketch(**params).fit(np.ones((3, 2)))
