"""Tests closing the gaps a sampled mutation run of features.constants found (issue 22).

Each test fails on one surviving mutant of ``tools/mutation.py --targets
features.constants --sample 40 --sample-seed 22`` (checked by applying it by hand);
the equivalent survivors are listed in ``tools/mutation.py``'s ``EQUIVALENT``.
"""

import functools
import math

import numpy as np
import pytest
import torch
from numpy.polynomial import hermite_e
from scipy import integrate

from kernelsketch.features import hermite_coefficients, piecewise_linear, relu_hermite_coefficients
from kernelsketch.features._powerseries import fit_nonnegative_polynomial
from kernelsketch.features.activations import (
    ACTIVATIONS,
    Activation,
    radial_coefficients,
    variance_map,
)
from kernelsketch.features.neural import neural_kernel


def test_fit_nonnegative_polynomial_recovers_a_nonnegative_polynomial(np_rng):
    # A polynomial with non-negative coefficients is its own best fit: NNLS recovers it.
    # A fresh key each call: the cache (by key) never answers, the fit always runs.
    coef = np_rng.uniform(0.1, 1.0, size=5)
    fit = fit_nonnegative_polynomial(object(), lambda t: torch.from_numpy(
        np.polynomial.polynomial.polyval(t.numpy(), coef)), 4)
    np.testing.assert_allclose(np.asarray(fit, dtype=np.float64), coef, rtol=1e-8, atol=1e-10)


def test_activation_returning_a_list_is_taken_at_float64():
    # Non-tensor outputs are converted at the input's precision (not torch's float32 default).
    as_list = hermite_coefficients(lambda z: torch.tanh(z).tolist(), 8)
    torch.testing.assert_close(as_list, hermite_coefficients(torch.tanh, 8), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("degree", [1, 2, 3, 6, 7])
def test_relu_hermite_coefficients_against_quadrature(degree):
    # a_i = int_0^inf g He_i(g) phi(g) dg / i!, by scipy quad in float64 (smooth on [0, 40];
    # phi(40) ~ 1e-348 ends the integrand).
    ref = []
    for i in range(degree + 1):
        he = hermite_e.HermiteE.basis(i)
        val, _ = integrate.quad(lambda g, he=he: g * he(g) * math.exp(-g * g / 2) / math.sqrt(
            2 * math.pi), 0.0, 40.0, epsabs=1e-13, epsrel=1e-10, limit=200)
        ref.append(val / math.factorial(i))
    a = relu_hermite_coefficients(degree)
    assert a.shape == (degree + 1,)
    np.testing.assert_allclose(a.numpy(), ref, rtol=1e-9, atol=1e-12)


def test_variance_map_closed_form_at_extreme_variance():
    # E[relu(sqrt(a) g)^2] = a / 2 up to a near float64's top, where squaring the
    # activation at quadrature nodes (|g| up to 10) would overflow.
    a = torch.tensor([1e-3, 1.0, 1e300, 1e307], dtype=torch.float64)
    torch.testing.assert_close(variance_map(ACTIVATIONS["relu"], a), a / 2, rtol=1e-14, atol=0.0)


def test_activation_repr_names_the_activation():
    assert "piecewise_linear(1, 0.25)" in repr(piecewise_linear(1.0, 0.25))
    assert "mine" in repr(Activation(torch.tanh, "mine"))
    assert "tanh" in repr(Activation(torch.tanh))
    part = functools.partial(torch.clamp, min=0.0)  # a callable without __name__
    assert "functools.partial" in repr(Activation(part))


def test_radial_coefficients_error_names_the_derivative():
    act = Activation(torch.tanh, derivative=lambda z: z.sum(-1, keepdim=True))
    r = torch.ones(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="activation's derivative must act elementwise"):
        radial_coefficients(act, r, 4, derivative=True)


def test_negative_bias_std_rejected(torch_generator):
    X = torch.randn(4, 3, generator=torch_generator, dtype=torch.float64)
    with pytest.raises(ValueError, match="bias_std"):
        neural_kernel(X, activation="relu", bias_std=-0.5)
