"""The metrics at the ends of float64's range and on non-finite outputs.

Found by the mutation run of issue 22: ``relative_error`` returned 0 for outputs
below ~1e-154 (the squared norms underflowed; 1e-160 gave 0.0994 for a true 0.1
and 1e300 gave NaN), and ``spectral_error`` on an output holding NaN raised
torch's ``LinAlgError`` from the SVD instead of a ValueError naming approx_out.
"""

import math

import numpy as np
import pytest
import torch

import kernelsketch._checks as checks
from kernelsketch.attn.common.metrics import relative_error, spectral_error

from ..reference import naive_attention


def _ratio(x: np.ndarray, y: np.ndarray) -> float:
    """‖y − x‖/‖x‖ at unit scale, summed exactly (math.fsum) in float64."""
    d = (y - x).ravel()
    return math.sqrt(math.fsum(d * d)) / math.sqrt(math.fsum(x.ravel() * x.ravel()))


# Scaling by a power of two is exact (above the subnormals; below, the scaled values
# are scaled back exactly), so the ratio of the unscaled values is the truth.
@pytest.mark.parametrize("exponent", [-1060, -1000, -520, -100, 0, 100, 520, 1000])
def test_relative_error_is_scale_free_over_float64s_range(exponent, torch_generator):
    g = torch_generator
    x = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    noise = 10.0 ** float(torch.empty(()).uniform_(-3, 0, generator=g))
    y = x + noise * torch.randn(x.shape, generator=g, dtype=torch.float64)
    e = torch.tensor(exponent)
    xs, ys = torch.ldexp(x, e), torch.ldexp(y, e)
    truth = _ratio(torch.ldexp(xs, -e).numpy(), torch.ldexp(ys, -e).numpy())
    assert truth > 1e-4
    assert relative_error(ys, xs) == pytest.approx(truth, rel=1e-12)
    if -100 <= exponent <= 100:  # float32 outputs are measured in float64 as well
        x32, y32 = xs.float(), ys.float()
        assert relative_error(y32, x32) == pytest.approx(
            _ratio(x32.double().numpy(), y32.double().numpy()), rel=1e-12)


def test_relative_error_of_a_far_off_or_zero_approximation(torch_generator):
    x = 2.0 ** -1000 * torch.randn(4, 6, generator=torch_generator, dtype=torch.float64)
    assert relative_error(torch.zeros_like(x), x) == pytest.approx(1.0, rel=1e-12)
    # An approximation 2^900 times too large: the ratio is 2^900 - 1, not inf or NaN.
    assert relative_error(2.0 ** 900 * x, x) == pytest.approx(2.0 ** 900, rel=1e-12)
    assert math.isnan(relative_error(torch.full_like(x, float("nan")), x))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("check_finite", [True, False])
def test_spectral_error_rejects_a_non_finite_output(bad, check_finite, torch_generator,
                                                    monkeypatch):
    """A ValueError naming approx_out, also with KERNELSKETCH_CHECK_FINITE=0 (never torch's
    LinAlgError from the SVD)."""
    monkeypatch.setattr(checks, "CHECK_FINITE", check_finite)
    g = torch_generator
    q = torch.randn(1, 2, 6, 4, generator=g, dtype=torch.float64)
    k = torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64)
    v = torch.randn(1, 2, 5, 3, generator=g, dtype=torch.float64)
    out = naive_attention(q, k, v)
    assert torch.all(spectral_error(out, q, k, v) < 1e-12)
    out[0, 1, 4, 2] = bad
    with pytest.raises(ValueError, match="approx_out must be finite"):
        spectral_error(out, q, k, v)
    with pytest.raises(ValueError, match="approx_out must be finite"):
        spectral_error(out, q, k, v, num_rows=2, generator=g)
