"""Shared attention helpers' behaviour the mutation runs left untested (issue 22).

Each test names the surviving mutants it kills (tools/mutation.py, target attn.metrics).
"""

import torch

from kernelsketch.attn.common.metrics import relative_error


def test_relative_error_against_an_all_zero_exact_output():
    # Kills the 5 mutants of relative_error's zero branch (full attn.metrics run at b8ee4e7:
    # `s == 1`, `* 1e-300`, `/ 1.0`, float(None), _frobenius(None)): for exact = 0 the error
    # is ‖approx‖_F against a norm of 1e-300, finite, never a division by zero.
    zero = torch.zeros(2, 3, 4, dtype=torch.float64)
    assert relative_error(zero, zero) == 0.0
    approx = zero.clone()
    approx[0, 1, 2], approx[1, 0, 3] = 3e-301, -4e-301  # ‖approx‖_F = 5e-301
    assert abs(relative_error(approx, zero) - 0.5) < 1e-12
    approx[0, 0, 0] = 1.0  # ‖approx‖_F ~ 1: the ratio is 1e300, still finite
    assert abs(relative_error(approx, zero) / 1e300 - 1.0) < 1e-12
    # An exact output whose largest entry is 1 takes the usual ratio (not the zero branch).
    one = zero.clone()
    one[0, 0, 0] = 1.0
    assert abs(relative_error(2 * one, one) - 1.0) < 1e-12
