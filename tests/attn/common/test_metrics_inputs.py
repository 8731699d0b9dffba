"""The metrics' arguments, defaults and edge cases (found untested by tools/mutation.py).

Validation mutants (a bound moved, an argument dropped), the default scale of
heavy_entry_recall, its ``>=`` at eps and its no-heavy-entry case, and the
clamps that keep tiny norms from dividing by zero all survived the metric tests.
"""

import math

import pytest
import torch

from kernelsketch.attn.common.metrics import (
    attention_probs,
    heavy_entry_recall,
    relative_error,
    spectral_error,
)

from ..reference import naive_attention


def qkv(seed, B=2, Hq=2, Hkv=1, N=12, M=10, D=4):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Hq, N, D, generator=g, dtype=torch.float64),
            torch.randn(B, Hkv, M, D, generator=g, dtype=torch.float64),
            torch.randn(B, Hkv, M, 3, generator=g, dtype=torch.float64), g)


def test_relative_error_of_tiny_and_non_finite_outputs(seed):
    g = torch.Generator().manual_seed(seed)
    exact = 1e-150 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    assert relative_error(3 * exact, exact) == pytest.approx(2.0, rel=1e-12)
    assert relative_error(exact + exact.abs().max(), exact) > 0.1
    bad = exact.clone()
    bad[0, 0] = float("inf")
    assert relative_error(bad, exact) == math.inf  # a diverged approximation is measured
    with pytest.raises(ValueError, match="exact"):
        relative_error(exact, bad)
    with pytest.raises(TypeError, match="approx"):
        relative_error([1.0], exact)


def test_spectral_error_is_scale_free_and_takes_the_given_scale(seed):
    q, k, v, g = qkv(seed)
    ref = naive_attention(q, k, v, scale=0.3)
    approx = ref + 0.1 * torch.randn(ref.shape, generator=g, dtype=torch.float64)
    err = spectral_error(approx, q, k, v, scale=0.3)
    assert err.dtype == torch.float64 and err.shape == (2, 2)
    # The scale is used: the exact output at scale 0.3 has zero error at 0.3 only.
    assert torch.all(spectral_error(ref, q, k, v, scale=0.3) < 1e-12)
    assert torch.all(spectral_error(ref, q, k, v) > 1e-3)
    # ‖Õ − D⁻¹AV‖₂/(‖D⁻¹A‖₂‖V‖₂) does not change when Õ and V shrink together.
    torch.testing.assert_close(spectral_error(1e-150 * approx, q, k, 1e-150 * v, scale=0.3), err)


@pytest.mark.parametrize("kwargs,match", [
    ({"scale": 0.0}, "scale"), ({"scale": -1.0}, "scale"), ({"scale": "1"}, "scale"),
    ({"power_iters": 0}, "power_iters"), ({"power_iters": 2.0}, "power_iters"),
    ({"num_rows": 0}, "num_rows"), ({"num_rows": 1.5}, "num_rows"),
])
def test_spectral_error_rejects_bad_arguments(kwargs, match, seed):
    q, k, v, _ = qkv(seed)
    with pytest.raises((ValueError, TypeError), match=match):
        spectral_error(naive_attention(q, k, v), q, k, v, **kwargs)


def test_spectral_error_accepts_the_smallest_valid_arguments(seed):
    q, k, v, _ = qkv(seed)
    ref = naive_attention(q, k, v)
    for kwargs in ({"power_iters": 1}, {"num_rows": 1}):
        assert torch.all(spectral_error(ref, q, k, v, **kwargs) < 1e-12), kwargs
    small = naive_attention(q, k, v, scale=1e-3)
    assert torch.all(spectral_error(small, q, k, v, scale=1e-3) < 1e-12)
    with pytest.raises(ValueError, match="approx_out"):
        spectral_error(ref[0], q, k, v)
    with pytest.raises(ValueError, match="approx_out"):
        spectral_error(ref.unsqueeze(-1), q, k, v)


def test_spectral_error_on_rows_that_see_no_key(seed):
    # Causal with N > M: the first N - M rows see no key, their rows of D⁻¹A are 0 and so is
    # the exact output; a subset of such rows has ‖D⁻¹A‖₂ = 0 and error 0, not NaN.
    q, k, v, _ = qkv(seed, B=1, Hq=1, N=6, M=2)
    ref = naive_attention(q, k, v, is_causal=True)
    for row_seed in range(12):  # each draws one row, 4 of 6 of them blind
        err = spectral_error(ref, q, k, v, is_causal=True, num_rows=1,
                             generator=torch.Generator().manual_seed(row_seed))
        assert err.item() < 1e-12, row_seed  # NaN fails too


def test_heavy_entry_recall_defaults_boundaries_and_causality(seed):
    q, k, _, _ = qkv(seed, B=1, Hq=1, N=8, M=8, D=4)
    # The recall is |heavy ∩ captured| / |heavy| of p >= eps, at the given scale or D^-1/2.
    some = torch.rand(8, 8, generator=torch.Generator().manual_seed(seed)) < 0.5
    for scale in (None, 2.0):
        p = attention_probs(q, k, scale=4 ** -0.5 if scale is None else scale)[0, 0]
        eps = float(p.max()) / 3
        heavy = p >= eps
        want = int((heavy & some).sum()) / int(heavy.sum())
        assert heavy_entry_recall(q, k, some, eps=eps, scale=scale) == pytest.approx(want), scale
    # An entry exactly at eps is heavy (>=): uniform rows of 1/8 with eps = 1/8.
    zeros = torch.zeros_like(q)
    none = torch.zeros(8, 8, dtype=torch.bool)
    assert heavy_entry_recall(zeros, k, none, eps=1 / 8) == 0.0
    assert heavy_entry_recall(zeros, k, ~none, eps=1 / 8) == 1.0
    # No entry reaches eps: nothing to recall, recall 1.
    assert heavy_entry_recall(zeros, k, none, eps=0.5) == 1.0
    # Causal: the first query's only key has probability 1; the future is not counted.
    diag = torch.eye(8, dtype=torch.bool)
    causal = heavy_entry_recall(zeros, k, diag, eps=1.0, is_causal=True)
    assert causal == pytest.approx(1 / 1)  # only row 0 reaches 1.0, and its key is captured
    assert heavy_entry_recall(zeros, k, diag, eps=0.5, is_causal=True) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="eps"):
        heavy_entry_recall(q, k, some, eps=0.0)
    with pytest.raises(ValueError, match="eps"):
        heavy_entry_recall(q, k, some, eps=1.5)
