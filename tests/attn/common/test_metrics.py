import pytest
import torch

from kernelsketch.attn.common.metrics import (
    attention_probs,
    heavy_entry_recall,
    relative_error,
    spectral_error,
)

from ..reference import naive_attention, randn_like, random_qkv


def test_relative_error_is_zero_for_exact_and_scales_linearly(torch_generator):
    q, k, v = random_qkv(1, 2, 2, 16, 16, 8)
    ref = naive_attention(q, k, v)
    assert relative_error(ref, ref) == 0.0
    noise = randn_like(ref, torch_generator)
    e1 = relative_error(ref + 1e-3 * noise, ref)
    e2 = relative_error(ref + 2e-3 * noise, ref)
    assert abs(e2 / e1 - 2) < 1e-9


def test_spectral_error_matches_dense_computation(torch_generator):
    q, k, v = random_qkv(1, 2, 1, 24, 24, 8)
    ref = naive_attention(q, k, v, is_causal=True)
    approx = ref + 0.01 * randn_like(ref, torch_generator)
    err = spectral_error(approx, q, k, v, is_causal=True)
    p = attention_probs(q, k, scale=8 ** -0.5, is_causal=True)
    for h in range(2):
        want = torch.linalg.matrix_norm(approx[0, h] - ref[0, h], ord=2) / (
            torch.linalg.matrix_norm(p[0, h], ord=2) * torch.linalg.matrix_norm(v[0, 0], ord=2))
        assert abs(err[0, h] - want) / want < 1e-6
    assert torch.all(spectral_error(ref, q, k, v, is_causal=True) < 1e-12)


def test_spectral_error_on_row_subset_is_zero_exactly_for_the_exact_output(torch_generator):
    # The sampled rows of the output must be compared with the same rows of the
    # reference (tests/attn/common/test_metrics_row_subset.py checks the value).
    q, k, v = random_qkv(1, 1, 1, 64, 64, 8)
    ref = naive_attention(q, k, v)
    approx = ref + 0.05 * randn_like(ref, torch_generator)
    sub = spectral_error(approx, q, k, v, num_rows=16, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(sub).all() and (sub > 0).all()
    zero = spectral_error(ref, q, k, v, num_rows=16, generator=torch.Generator().manual_seed(1))
    assert (zero < 1e-12).all(), zero


def test_heavy_entry_recall():
    q, k, _ = random_qkv(1, 1, 1, 10, 10, 4, scale=3.0)
    p = attention_probs(q, k, scale=0.5)
    assert heavy_entry_recall(q, k, torch.ones(10, 10, dtype=torch.bool), eps=0.1, scale=0.5) == 1.0
    heavy = p >= 0.1
    assert heavy.any()
    assert heavy_entry_recall(q, k, torch.zeros(10, 10, dtype=torch.bool), eps=0.1, scale=0.5) == 0.0
    half = heavy.clone()
    idx = heavy.nonzero()[: heavy.sum() // 2]
    half[...] = False
    half[tuple(idx.T)] = True
    r = heavy_entry_recall(q, k, half, eps=0.1, scale=0.5)
    assert r == pytest.approx(len(idx) / int(heavy.sum()))


def test_metric_bad_inputs():
    q, k, v = random_qkv(1, 1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="approx must have shape"):
        relative_error(q[..., :2], q)
    with pytest.raises(ValueError, match="eps must be"):
        heavy_entry_recall(q, k, torch.ones(4, 4, dtype=torch.bool), eps=2.0)
    with pytest.raises(TypeError, match="captured must have dtype"):
        heavy_entry_recall(q, k, torch.ones(4, 4), eps=0.5)
    with pytest.raises(ValueError, match="approx_out must have shape"):
        spectral_error(q[:, :, :2], q, k, v)
