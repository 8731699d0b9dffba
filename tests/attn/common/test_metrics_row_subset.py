"""spectral_error on a random subset of query rows (the path the benchmarks report).

The oracle finds the sampled rows from the metric's own answers (a perturbation
of one row is seen iff that row is sampled) and recomputes the error densely
on those rows, so a subset read in the wrong order, the wrong rows, or rows
other than the ones in the denominator disagree with it.
"""

import pytest
import torch

from kernelsketch.attn.common.metrics import attention_probs, spectral_error

from ..reference import naive_attention


def inputs(seed, N=24, M=20, D=8, Hq=2, Hkv=1):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, Hq, N, D, generator=g, dtype=torch.float64)
    k = torch.randn(1, Hkv, M, D, generator=g, dtype=torch.float64)
    v = torch.randn(1, Hkv, M, 6, generator=g, dtype=torch.float64)
    return q, k, v, g


def sampled_rows(ref, q, k, v, row_seed, num_rows, is_causal):
    """The rows spectral_error samples with this generator seed, found by probing each row."""
    rows = []
    for r in range(ref.shape[2]):
        probe = ref.clone()
        probe[:, :, r] += 1.0
        err = spectral_error(probe, q, k, v, is_causal=is_causal, num_rows=num_rows,
                             generator=torch.Generator().manual_seed(row_seed))
        if err[0, 0] > 1e-9:
            rows.append(r)
    return torch.tensor(rows)


@pytest.mark.parametrize("is_causal", [False, True])
def test_exact_output_has_zero_error_on_any_row_subset(seed, is_causal):
    q, k, v, _ = inputs(seed)
    ref = naive_attention(q, k, v, is_causal=is_causal)
    for row_seed in range(4):
        err = spectral_error(ref, q, k, v, is_causal=is_causal, num_rows=7,
                             generator=torch.Generator().manual_seed(row_seed))
        # Rows of the output read against other rows of the reference give errors of order 1.
        assert torch.all(err < 1e-12), err


@pytest.mark.parametrize("is_causal", [False, True])
def test_row_subset_error_equals_the_dense_error_on_the_sampled_rows(seed, is_causal):
    q, k, v, g = inputs(seed)
    ref = naive_attention(q, k, v, is_causal=is_causal)
    approx = ref + 0.05 * torch.randn(ref.shape, generator=g, dtype=torch.float64)
    num_rows = 7
    seen = set()
    for row_seed in range(3):
        rows = sampled_rows(ref, q, k, v, row_seed, num_rows, is_causal)
        assert len(rows) == num_rows
        seen.add(tuple(rows.tolist()))
        got = spectral_error(approx, q, k, v, is_causal=is_causal, num_rows=num_rows,
                             generator=torch.Generator().manual_seed(row_seed))
        p = attention_probs(q, k, scale=8 ** -0.5, is_causal=is_causal)[0]  # [Hq, N, M]
        for h in range(2):
            want = torch.linalg.matrix_norm(approx[0, h, rows] - ref[0, h, rows], ord=2) / (
                torch.linalg.matrix_norm(p[h, rows], ord=2) * torch.linalg.matrix_norm(v[0, 0], ord=2))
            assert abs(got[0, h] - want) / want < 1e-6, (h, float(got[0, h]), float(want))
    assert len(seen) > 1  # the generator chooses the rows


def test_all_rows_when_num_rows_reaches_the_row_count(seed):
    q, k, v, g = inputs(seed)
    ref = naive_attention(q, k, v)
    approx = ref + 0.05 * torch.randn(ref.shape, generator=g, dtype=torch.float64)
    full = spectral_error(approx, q, k, v)
    torch.testing.assert_close(spectral_error(approx, q, k, v, num_rows=24), full, rtol=1e-9,
                               atol=0)
    torch.testing.assert_close(spectral_error(approx, q, k, v, num_rows=100), full, rtol=1e-9,
                               atol=0)
