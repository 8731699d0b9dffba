"""Importance and uniform sampling with unbiased weights; generator resolution."""

import math

import pytest
import torch

from kernelsketch.sketch.sampling import importance_sample, resolve_generator, uniform_sample
from tests.sketch.stats import assert_unbiased


def _estimate(f, idx, w):
    return (w * f.gather(-1, idx)).sum(-1)


@pytest.mark.statistical
@pytest.mark.parametrize("replacement", [True, False])
def test_importance_sample_unbiased(replacement, torch_generator, measure):
    gen = torch_generator
    probs = torch.rand(3, 40, dtype=torch.float64, generator=gen) ** 2 + 0.01
    f = torch.randn(3, 40, dtype=torch.float64, generator=gen) + probs * 5
    truth = f.sum(-1)
    est = torch.stack([_estimate(f, *importance_sample(probs, 8, generator=gen,
                                                       replacement=replacement))
                       for _ in range(2000)])
    # Bonferroni-corrected t bound over the 3 entries (z = 5.12, < 1e-6 per run). Measured
    # max |z| over 50 seed offsets (tools/stat_runs.py): replacement 1.19 +- 0.47 (max 2.65),
    # without 1.33 +- 0.69 (max 3.18); 0 failures. Power guard rel_stderr <= 0.016 +- 0.003
    # (max 0.025, 50 offsets; bound 0.05), so a bias above ~8% of the truth fails.
    measure("max_abs_z", assert_unbiased(est, truth, max_rel_stderr=0.05, measure=measure))


def test_importance_sampling_with_proportional_probabilities_is_exact(torch_generator):
    # The variance vanishes when probs ∝ f >= 0: every weighted sample equals sum f.
    f = torch.rand(2, 30, dtype=torch.float64, generator=torch_generator) + 0.1
    idx, w = importance_sample(f, 5)
    torch.testing.assert_close(_estimate(f, idx, w), f.sum(-1), rtol=1e-12, atol=0)


@pytest.mark.statistical
def test_importance_sample_frequencies_follow_probs(torch_generator, measure):
    gen = torch_generator
    probs = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    idx, w = importance_sample(probs, 20000, generator=gen)
    freq = torch.bincount(idx, minlength=4).double() / 20000
    p = probs / probs.sum()
    z = measure("max_abs_z", ((freq - p).abs() / torch.sqrt(p * (1 - p) / 20000)).max().item())
    # Each frequency is ~normal (n = 20000): P(|z| > 5.5) = 3.8e-8 per entry, < 2e-7 for the 4.
    # Measured over 50 seed offsets: 1.42 +- 0.65 (max 3.56), 0 failures; 5.5 is 6.3 sd above.
    assert z < 5.5
    torch.testing.assert_close(w, 1 / (20000 * p[idx]))


def test_importance_sample_without_replacement_has_distinct_indices(torch_generator):
    probs = torch.rand(4, 3, 50, generator=torch_generator) + 0.01
    idx, w = importance_sample(probs, 20, replacement=False)
    assert idx.shape == (4, 3, 20) and w.shape == (4, 3, 20)
    assert all(row.unique().numel() == 20 for row in idx.reshape(-1, 20))
    assert (w >= 1).all()


def test_importance_sample_all_items_without_replacement(torch_generator):
    probs = torch.rand(2, 6, dtype=torch.float64, generator=torch_generator)
    idx, w = importance_sample(probs, 6, replacement=False)
    assert torch.equal(idx.sort(-1).values, torch.arange(6).expand(2, 6))
    assert torch.equal(w, torch.ones(2, 6, dtype=torch.float64))


def test_importance_sample_never_picks_zero_probability_with_replacement():
    probs = torch.tensor([[0.0, 1.0, 0.0, 2.0]])
    idx, _ = importance_sample(probs, 500)
    assert set(idx.unique().tolist()) <= {1, 3}


def test_importance_sample_zero_probability_items_get_zero_weight():
    probs = torch.tensor([[0.0, 1.0, 0.0, 2.0]], dtype=torch.float64)
    idx, w = importance_sample(probs, 3, replacement=False)
    assert (w[probs.gather(-1, idx) == 0] == 0).all()
    assert (w[probs.gather(-1, idx) > 0] == 1).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_importance_sample_weight_dtype(dtype, torch_generator):
    _, w = importance_sample(torch.rand(3, 10, generator=torch_generator).to(dtype) + 0.1, 4)
    assert w.dtype == (torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)


def test_importance_sample_generator_determinism(torch_generator):
    probs = torch.rand(5, 30, generator=torch_generator)
    a = importance_sample(probs, 7, generator=torch.Generator().manual_seed(4))
    b = importance_sample(probs, 7, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.statistical
@pytest.mark.parametrize("replacement", [True, False])
def test_uniform_sample_unbiased(replacement, torch_generator, measure):
    gen = torch_generator
    f = torch.randn(4, 64, dtype=torch.float64, generator=gen) + 1.0
    truth = f.sum(-1)
    est = []
    for _ in range(1000):
        idx, w = uniform_sample(64, 16, batch_shape=(4,), generator=gen, replacement=replacement,
                                dtype=torch.float64)
        est.append(_estimate(f, idx, w))
    # Bonferroni-corrected t bound over the 4 entries (z = 5.19, < 1e-6 per run). Measured
    # max |z| over 50 seed offsets: replacement 1.44 +- 0.47 (max 2.29), without 1.53 +- 0.54
    # (max 2.84); 0 failures. rel_stderr <= 0.0093 +- 0.0013 (max 0.0125; bound 0.05).
    measure("max_abs_z", assert_unbiased(torch.stack(est), truth, max_rel_stderr=0.05, measure=measure))


def test_uniform_sample_shapes_and_weights():
    idx, w = uniform_sample(100, 10, batch_shape=(2, 3), replacement=False)
    assert idx.shape == (2, 3, 10) and idx.dtype == torch.int64
    assert ((idx >= 0) & (idx < 100)).all()
    assert all(row.unique().numel() == 10 for row in idx.reshape(-1, 10))
    assert torch.equal(w, torch.full((2, 3, 10), 10.0))


def test_uniform_sample_is_not_a_prefix(torch_generator):
    # Sampling "the first m" is not sampling: indices must cover the whole range. Exact tail:
    # 1000 uniform draws all miss [901, 1000) (or [0, 100)) with probability < 2 * 0.9**1000 ~ 1e-46.
    idx, _ = uniform_sample(1000, 50, batch_shape=(20,), generator=torch_generator)
    assert idx.max() > 900 and idx.min() < 100


def test_resolve_generator():
    assert resolve_generator() is None
    g = torch.Generator()
    assert resolve_generator(generator=g) is g
    a, b = resolve_generator(seed=5), resolve_generator(seed=5)
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))


def test_importance_sample_rejects_negative_probs():
    with pytest.raises(ValueError, match="probs must be non-negative"):
        importance_sample(torch.tensor([0.5, -0.1, 0.6]), 2)


def test_importance_sample_rejects_all_zero_row():
    with pytest.raises(ValueError, match="probs must have a positive entry in every row"):
        importance_sample(torch.tensor([[0.5, 0.5], [0.0, 0.0]]), 2)


def test_importance_sample_rejects_nan():
    with pytest.raises(ValueError, match="probs must be finite"):
        importance_sample(torch.tensor([0.5, math.nan]), 2)


def test_importance_sample_rejects_integer_probs():
    with pytest.raises(TypeError, match="probs must have dtype in"):
        importance_sample(torch.tensor([1, 2, 3]), 2)


def test_importance_sample_rejects_zero_samples(torch_generator):
    with pytest.raises(ValueError, match="num_samples must be >= 1, got 0"):
        importance_sample(torch.rand(5, generator=torch_generator), 0)


def test_importance_sample_rejects_too_many_without_replacement(torch_generator):
    with pytest.raises(ValueError, match="num_samples must be <= n=5 when replacement=False, got 6"):
        importance_sample(torch.rand(5, generator=torch_generator), 6, replacement=False)


def test_importance_sample_rejects_scalar():
    with pytest.raises(ValueError, match=r"probs must have shape \[\.\.\., n\]"):
        importance_sample(torch.tensor(1.0), 1)


def test_uniform_sample_rejects_too_many_without_replacement():
    with pytest.raises(ValueError, match="num_samples must be <= n=5 when replacement=False, got 9"):
        uniform_sample(5, 9, replacement=False)


def test_uniform_sample_rejects_zero_population():
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        uniform_sample(0, 3)


def test_uniform_sample_rejects_bad_batch_shape():
    with pytest.raises(ValueError, match="batch_shape entries must be >= 1, got 0"):
        uniform_sample(5, 3, batch_shape=(2, 0))


def test_uniform_sample_rejects_integer_weight_dtype():
    with pytest.raises(TypeError, match="dtype must be a floating dtype, got torch.int64"):
        uniform_sample(5, 3, dtype=torch.int64)


def test_resolve_generator_rejects_both():
    with pytest.raises(ValueError, match="either seed or generator, not both"):
        resolve_generator(seed=1, generator=torch.Generator())


def test_resolve_generator_rejects_float_seed():
    with pytest.raises(TypeError, match="seed must be an int, got float 1.5"):
        resolve_generator(seed=1.5)
