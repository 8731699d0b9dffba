"""neural_kernel: closed forms vs Hermite series vs quadrature vs finite torch networks."""

import math

import numpy as np
import pytest
import torch

from kernelsketch.features import (
    ACTIVATIONS,
    dual_activation,
    neural_kernel,
    nngp_relu,
    ntk_relu,
    piecewise_linear,
)
from kernelsketch.features.neural import _network_kernels, empirical_kernel

f64 = torch.float64
CLOSED = [name for name, act in ACTIVATIONS.items() if act.dual is not None]
NETWORK = {"depth": 2, "weight_std": 1.3, "bias_std": 0.4}


def _rel(A, B):
    return (torch.linalg.norm(torch.as_tensor(A) - torch.as_tensor(B))
            / torch.linalg.norm(torch.as_tensor(B))).item()


# ----------------------------------------------------------------------------- conventions


@pytest.mark.parametrize("depth", [1, 3])
def test_relu_oracles_are_the_same_kernel_rescaled(depth, torch_generator):
    X = torch.randn(6, 5, dtype=f64, generator=torch_generator)
    Y = torch.randn(3, 5, dtype=f64, generator=torch_generator)
    for old, kernel in ((ntk_relu, "ntk"), (nngp_relu, "nngp")):
        new = neural_kernel(X, Y, depth=depth, kernel=kernel, weight_std=math.sqrt(2))
        torch.testing.assert_close(old(X, Y, depth=depth), 5 / 2 * new, rtol=1e-12, atol=1e-12)


def test_dual_activation_is_the_unit_variance_nngp_of_scaled_inputs(torch_generator):
    X = 0.6 * torch.randn(5, 4, dtype=f64, generator=torch_generator)
    for name in ("gelu", "erf", "cos"):
        torch.testing.assert_close(
            dual_activation(name, X, depth=2),
            neural_kernel(2.0 * X, activation=name, depth=2, kernel="nngp"),
            rtol=1e-12, atol=1e-14,
        )


def test_depth1_relu_with_bias_matches_the_arc_cosine_formulas(torch_generator):
    # Written out independently: K0 = w^2 <x,y>/d + b^2, angle theta of K0.
    X = torch.randn(5, 3, dtype=f64, generator=torch_generator)
    w, b, d = 1.7, 0.6, 3
    K0 = w**2 * X @ X.T / d + b**2
    n = K0.diagonal().sqrt()
    theta = torch.arccos((K0 / (n[:, None] * n[None, :])).clamp(-1, 1))
    nngp = w**2 * n[:, None] * n[None, :] * (torch.sin(theta) + (math.pi - theta)
                                             * torch.cos(theta)) / (2 * math.pi) + b**2
    ntk = nngp + w**2 * (math.pi - theta) / (2 * math.pi) * K0
    kw = {"weight_std": w, "bias_std": b}
    torch.testing.assert_close(neural_kernel(X, kernel="nngp", **kw), nngp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(neural_kernel(X, **kw), ntk, rtol=1e-12, atol=1e-12)


def test_standard_parameterization_nngp_is_the_ntk_parameterization_nngp(torch_generator):
    X = torch.randn(4, 3, dtype=f64, generator=torch_generator)
    a = neural_kernel(X, activation="tanh", kernel="nngp", parameterization="standard", **NETWORK)
    b = neural_kernel(X, activation="tanh", kernel="nngp", **NETWORK)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_relu_is_piecewise_linear_one_zero_and_abs_is_one_minus_one(torch_generator):
    X = torch.randn(5, 4, dtype=f64, generator=torch_generator)
    for name, act in (("relu", piecewise_linear(1.0, 0.0)), ("abs", piecewise_linear(1.0, -1.0))):
        torch.testing.assert_close(neural_kernel(X, activation=name, **NETWORK),
                                   neural_kernel(X, activation=act, **NETWORK))


# ----------------------------------------------------------------------------- methods agree


@pytest.mark.parametrize("kernel", ["ntk", "nngp"])
@pytest.mark.parametrize("name", CLOSED)
def test_closed_form_hermite_and_quadrature_agree(name, kernel, torch_generator):
    # Moderate pre-activation variances, where the Hermite series is certified everywhere
    # except the diagonal (collinear pairs: 1-D integrals).
    X = torch.randn(4, 3, dtype=f64, generator=torch_generator)
    kw = {"activation": name, "kernel": kernel, **NETWORK}
    exact = neural_kernel(X, **kw)
    scale = exact.abs().max()
    for method in ("quadrature", "hermite") if name not in ("relu", "abs", "leaky_relu", "step") \
            else ("quadrature",):
        got = neural_kernel(X, method=method, tol=1e-11, **kw)
        assert (got - exact).abs().max() <= 1e-8 * scale, (method, got - exact)


@pytest.mark.parametrize("name", ["erf", "gelu", "sin", "gaussian"])
def test_callable_activation_matches_its_closed_form(name, torch_generator):
    # A plain callable (derivative by autograd) goes through the Hermite series.
    X = torch.randn(5, 3, dtype=f64, generator=torch_generator)
    fn = ACTIVATIONS[name].fn
    for kernel in ("ntk", "nngp"):
        exact = neural_kernel(X, activation=name, kernel=kernel, **NETWORK)
        got = neural_kernel(X, activation=lambda z, fn=fn: fn(z), kernel=kernel, **NETWORK)
        assert (got - exact).abs().max() <= 1e-8 * exact.abs().max()


def test_non_smooth_callable_falls_back_to_quadrature_near_the_diagonal(torch_generator):
    # ReLU as a callable: its Hermite tail decays algebraically, so correlations near 1
    # (a pair of near-duplicates) are computed by the 2-D quadrature.
    X = torch.randn(4, 3, dtype=f64, generator=torch_generator)
    X[1] = X[0] + 1e-3 * X[1]
    exact = neural_kernel(X, activation="relu", **NETWORK)
    got = neural_kernel(X, activation=lambda z: torch.clamp(z, min=0), **NETWORK)
    assert (got - exact).abs().max() <= 1e-8 * exact.abs().max()
    with pytest.raises(ValueError, match="Hermite series .* does not reach tol"):
        neural_kernel(X, activation=lambda z: torch.clamp(z, min=0), method="hermite", **NETWORK)


# ----------------------------------------------------------------------------- finite networks


def test_network_kernels_equal_full_autograd_on_a_small_network(seed):
    # The chain-rule contraction of _network_kernels against per-parameter gradients.
    X = torch.randn(4, 3, dtype=f64, generator=torch.Generator().manual_seed(seed))
    depth, width, w, b = 2, 8, 1.3, 0.4
    dims = [3, width, width, 1]
    g = torch.Generator().manual_seed(seed + 1)
    raw = []
    for layer in range(depth + 1):
        raw.append((torch.randn(dims[layer + 1], dims[layer], generator=g).double(),
                    torch.randn(dims[layer + 1], generator=g).double()))
    for parameterization in ("ntk", "standard"):
        if parameterization == "ntk":
            params = [t.clone().requires_grad_() for pair in raw for t in pair]
        else:
            params = [t.clone().requires_grad_() for layer, (W, bb) in enumerate(raw)
                      for t in (w / math.sqrt(dims[layer]) * W, b * bb)]
        grads = []
        for x in X:
            h = x
            for layer in range(depth + 1):
                W, bb = params[2 * layer], params[2 * layer + 1]
                if parameterization == "ntk":
                    z = w / math.sqrt(dims[layer]) * W @ h + b * bb
                else:
                    z = W @ h + bb
                h = torch.tanh(z) if layer < depth else z
            grads.append(torch.cat([gr.reshape(-1) for gr in torch.autograd.grad(h.sum(), params)]))
        G = torch.stack(grads)
        want = G @ G.T if parameterization == "ntk" else G @ G.T / width
        _, ntk, standard = _network_kernels(X, ACTIVATIONS["tanh"], depth, width, w, b,
                                            torch.Generator().manual_seed(seed + 1))
        got = ntk if parameterization == "ntk" else standard
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.statistical
@pytest.mark.parametrize("name", [*CLOSED, "tanh"])
def test_one_hidden_layer_networks_average_to_the_kernel_at_any_width(name, seed, measure):
    # With one hidden layer the pre-activations are exactly Gaussian: the finite-width NNGP
    # and NTK (NTK parameterization) average to the kernel at any width. 64 networks of width
    # 512; 30 entries within 7 standard errors (Student t, 63 degrees of freedom: P(fail) <
    # 30 * 2e-9 per run). Measured over 200 seed offsets: the largest |z| per run has mean
    # 1.7-2.0 and maximum 5.5 (relu), 4.6 (cos).
    X = torch.randn(5, 3, dtype=f64, generator=torch.Generator().manual_seed(seed))
    act, w, b = ACTIVATIONS[name], NETWORK["weight_std"], NETWORK["bias_std"]
    runs = [_network_kernels(X, act, 1, 512, w, b, torch.Generator().manual_seed(seed + 1 + i))
            for i in range(64)]
    for k, kernel in ((0, "nngp"), (1, "ntk")):
        samples = torch.stack([r[k] for r in runs])
        mc, se = samples.mean(0), samples.std(0) / 8
        exact = neural_kernel(X, activation=name, depth=1, kernel=kernel, weight_std=w,
                              bias_std=b)
        measure(f"max_z_{kernel}", ((mc - exact).abs() / se).max().item())
        assert torch.all((mc - exact).abs() <= 7 * se + 1e-12), kernel


# Width 4096, 2 initialisations, depth 2, 5 inputs: sqrt(width * inits) times the relative
# Frobenius error of the averaged finite-width kernels, measured over 60 seed offsets
# (tools/stat_runs.py): mean 0.44 (gaussian) to 2.7 (gelu), max/mean up to 3.7, over the
# NNGP, the NTK and the standard-parameterization NTK / width. The bound per activation is 7
# times its largest measured mean: for a half-normal statistic P(X > 6.9 mean) = 4e-8.
MC_BOUND = {"relu": 19, "leaky_relu": 19, "abs": 11, "erf": 11, "gelu": 19, "sin": 12,
            "cos": 10, "gaussian": 4, "step": 8, "tanh": 11}


@pytest.mark.statistical
@pytest.mark.parametrize("name", [*CLOSED, "tanh"])
def test_wide_deep_networks_converge_to_the_kernel(name, seed, measure):
    width, inits = 4096, 2
    X = torch.randn(5, 3, dtype=f64, generator=torch.Generator().manual_seed(seed))
    act = ACTIVATIONS[name]
    runs = [_network_kernels(X, act, NETWORK["depth"], width, NETWORK["weight_std"],
                             NETWORK["bias_std"], torch.Generator().manual_seed(seed + 1 + i))
            for i in range(inits)]
    for k, (kernel, parameterization) in enumerate(
            (("nngp", "ntk"), ("ntk", "ntk"), ("ntk", "standard"))):
        empirical = sum(r[k] for r in runs) / inits
        exact = neural_kernel(X, activation=name, kernel=kernel,
                              parameterization=parameterization, **NETWORK)
        err = measure(f"{kernel}-{parameterization}",
                      math.sqrt(width * inits) * _rel(empirical, exact))
        assert err <= MC_BOUND[name], (kernel, parameterization, err)


@pytest.mark.statistical
@pytest.mark.parametrize("name", ["relu", "erf", "tanh"])
def test_finite_network_error_falls_like_one_over_sqrt_width(name, seed, measure):
    # The NTK of a width-n network fluctuates like n^-1/2 around the kernel (its mean is off by
    # O(1/n)): the slope of log(mean error over 16 networks) against log(width), widths
    # 64..1024, is -1/2. Measured over 200 seed offsets: mean -0.49 to -0.50, standard
    # deviation 0.046-0.053, range [-0.67, -0.35]. The band [-0.85, -0.2] is 5.6 standard
    # deviations from the mean (P(fail) < 1e-7); a kernel off by a constant would flatten the
    # slope toward 0, an error of order 1/width steepen it toward -1.
    X = torch.randn(5, 3, dtype=f64, generator=torch.Generator().manual_seed(seed))
    exact = neural_kernel(X, activation=name, **NETWORK)
    widths = (64, 128, 256, 512, 1024)
    errs = []
    for width in widths:
        errs.append(sum(_rel(_network_kernels(X, ACTIVATIONS[name], NETWORK["depth"], width,
                                              NETWORK["weight_std"], NETWORK["bias_std"],
                                              torch.Generator().manual_seed(seed + width + i))[1],
                             exact) for i in range(16)) / 16)
    slope = measure("slope", np.polyfit(np.log(widths), np.log(errs), 1)[0])
    assert -0.85 <= slope <= -0.2, errs


def test_empirical_kernel_takes_x_and_y(torch_generator):
    X = torch.randn(3, 2, dtype=f64, generator=torch_generator)
    Y = torch.randn(2, 2, dtype=f64, generator=torch_generator)
    both = empirical_kernel(torch.cat([X, Y]), activation="erf", width=16,
                            generator=torch.Generator().manual_seed(0))
    cross = empirical_kernel(X, Y, activation="erf", width=16,
                             generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cross, both[:3, 3:])


# ----------------------------------------------------------------------------- scale and dtypes


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "abs"])
def test_relu_family_without_bias_is_homogeneous_at_any_scale(name, torch_generator):
    X = torch.randn(4, 3, dtype=f64, generator=torch_generator)
    K = neural_kernel(X, activation=name, depth=3)
    for s in (1e-150, 1e150):
        torch.testing.assert_close(neural_kernel(s * X, activation=name, depth=3) / s**2, K)


def test_step_kernel_is_scale_free_and_finite_in_float32(torch_generator):
    X = torch.randn(4, 3, generator=torch_generator)
    K = neural_kernel(X * 1e20, activation="step", depth=2)
    assert K.dtype == torch.float32
    torch.testing.assert_close(K, neural_kernel(X, activation="step", depth=2))


def test_overflowing_kernels_raise_value_error_naming_x(torch_generator):
    X = torch.randn(4, 3, dtype=f64, generator=torch_generator)
    with pytest.raises(ValueError, match="X's scale overflows the kernel in float64"):
        ntk_relu(X * 1e200)
    with pytest.raises(ValueError, match="X's scale overflows the kernel in float32"):
        neural_kernel(X.float() * 1e20)
    with pytest.raises(ValueError, match="X's first-layer variances overflow float64"):
        neural_kernel(X * 1e200, activation="erf")


def test_bounded_activations_are_finite_at_huge_variances(torch_generator):
    X = torch.randn(4, 3, dtype=f64, generator=torch_generator) * 1e100
    for name in ("erf", "gelu", "gaussian", "sin", "cos", "step"):
        for kernel in ("ntk", "nngp"):
            assert torch.isfinite(neural_kernel(X, activation=name, kernel=kernel)).all(), name


def test_numpy_in_float64_numpy_out_and_torch_dtype_preserved(np_rng):
    X = np_rng.standard_normal((5, 3))
    K = neural_kernel(X, activation="gelu", **NETWORK)
    assert isinstance(K, np.ndarray) and K.dtype == np.float64 and K.shape == (5, 5)
    np.testing.assert_allclose(K, K.T, atol=1e-14)
    assert np.linalg.eigvalsh(K).min() > -1e-10
    Kt = neural_kernel(torch.from_numpy(X).float(), activation="gelu", **NETWORK)
    assert Kt.dtype == torch.float32
    np.testing.assert_allclose(Kt.numpy(), K, rtol=1e-6)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, exc, msg",
    [
        ({"activation": "swish"}, ValueError, "activation must be one of"),
        ({"activation": 3}, TypeError, "activation must be one of .* or a callable, got int"),
        ({"depth": 0}, ValueError, "depth must be >= 1, got 0"),
        ({"depth": 1.5}, TypeError, "depth must be an int"),
        ({"depth": True}, TypeError, "depth must be an int"),
        ({"kernel": "cntk"}, ValueError, "kernel must be one of"),
        ({"weight_std": -1.0}, ValueError, "weight_std must be >= 0.0, got -1.0"),
        ({"weight_std": float("nan")}, ValueError, "weight_std must be finite"),
        ({"bias_std": float("inf")}, ValueError, "bias_std must be finite"),
        ({"bias_std": "0.1"}, TypeError, "bias_std must be a real number"),
        ({"parameterization": "mup"}, ValueError, "parameterization must be one of"),
        ({"method": "exact"}, ValueError, "method must be one of"),
        ({"tol": 0.0}, ValueError, "tol must be > 0.0"),
        ({"tol": 0.5}, ValueError, "tol must be <= 0.01"),
        ({"activation": "tanh", "method": "closed_form"}, ValueError,
         "method='closed_form' needs an activation with a closed-form dual"),
        ({"activation": lambda z: z.sum()}, ValueError, "activation must act elementwise"),
        ({"activation": lambda z: torch.exp(40 * z)}, ValueError,
         "activation returned non-finite values"),
    ],
)
def test_bad_parameters_raise_clear_errors(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        neural_kernel(torch.ones(2, 2, dtype=f64), **kwargs)


def test_ntk_of_a_non_differentiable_callable_is_a_type_error():
    with pytest.raises(TypeError, match="must be differentiable by torch.autograd"):
        neural_kernel(torch.ones(2, 2, dtype=f64),
                      activation=lambda z: torch.from_numpy(np.tanh(z.detach().numpy())))


def test_bad_inputs_raise_clear_errors():
    X = torch.ones(2, 3, dtype=f64)
    X[0, 0] = float("nan")
    with pytest.raises(ValueError, match="X must be finite"):
        neural_kernel(X)
    with pytest.raises(ValueError, match=r"Y must have the trailing shape \[3\] of X, got \[2\]"):
        neural_kernel(torch.ones(2, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match="X must have 2 dimensions"):
        neural_kernel(torch.ones(2, 3, 1))
