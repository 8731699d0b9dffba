import math

import pytest
import torch

import kernelsketch as ks
from kernelsketch.attn.common.metrics import relative_error, spectral_error
from kernelsketch.attn.hyper import HyperConfig, hyper_noncausal

from ..reference import input_stream, naive_attention, randn_like, random_qkv


def gen(seed):
    return torch.Generator().manual_seed(seed)


def hyper(q, k, v, cfg, seed=None, **kw):
    g = None if seed is None else gen(seed)
    return ks.attention(q, k, v, method="hyper", config=cfg, generator=g, **kw)


SHAPES = [(1, 2, 2, 100, 100, 16), (2, 4, 2, 77, 130, 16), (1, 3, 1, 130, 77, 8)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("is_causal", [False, True])
def test_full_budget_blocks_equal_exact(shape, is_causal):
    B, Hq, Hkv, N, M, D = shape
    q, k, v = random_qkv(B, Hq, Hkv, N, M, D)
    cfg = HyperConfig.full_budget(max(N, M))
    out, lse = hyper(q, k, v, cfg, is_causal=is_causal, return_lse=True)
    ref, ref_lse = naive_attention(q, k, v, is_causal=is_causal, return_lse=True)
    torch.testing.assert_close(out, ref)
    fin = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[fin], ref_lse[fin])


@pytest.mark.parametrize("rounds", [1, 3])
@pytest.mark.parametrize("sampling", ["uniform", "value_norm"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_sample_covering_all_keys_equals_exact_no_pair_counted_twice(rounds, sampling, is_causal):
    q, k, v = random_qkv(1, 4, 2, 90, 90, 8)
    cfg = HyperConfig(block_size=8, sample_size=1000, min_seq_len=10, lsh_bits=3,
                      hash_rounds=rounds, sampling=sampling)
    out, lse = hyper(q, k, v, cfg, is_causal=is_causal, return_lse=True)
    ref, ref_lse = naive_attention(q, k, v, is_causal=is_causal, return_lse=True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lse, ref_lse)


@pytest.mark.parametrize("is_causal", [False, True])
def test_cross_attention_gqa_and_scale_with_full_sample_equal_exact(is_causal):
    # N != M, neither a multiple of the block size, 2 query heads per key head, custom scale.
    q, k, v = random_qkv(1, 4, 2, 70, 101, 8, 12)
    cfg = HyperConfig(block_size=8, sample_size=200, min_seq_len=10, lsh_bits=3, hash_rounds=2,
                      sampling="value_norm")
    out, lse = hyper(q, k, v, cfg, seed=0, is_causal=is_causal, scale=0.3, return_lse=True)
    ref, ref_lse = naive_attention(q, k, v, scale=0.3, is_causal=is_causal, return_lse=True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lse, ref_lse)


def test_samples_per_key_sets_the_sample_the_estimator_uses():
    q, k, v = random_qkv(1, 2, 2, 64, 96, 8)
    # sample_size 0 + one sample per key = every key with weight 1: exact attention.
    cfg = HyperConfig(block_size=8, sample_size=0, samples_per_key=1.0, min_seq_len=0, lsh_bits=3)
    torch.testing.assert_close(hyper(q, k, v, cfg, seed=0), naive_attention(q, k, v))
    # Growing the fraction grows the sample: the error falls like 1/sqrt(s) (s = 16, 64).
    e = [mean_error(HyperConfig(block_size=64, sample_size=0, samples_per_key=f, min_seq_len=0))
         for f in (1 / 32, 1 / 8)]
    assert e[1] < 0.75 * e[0], e


def test_short_sequences_fall_back_to_exact():
    q, k, v = random_qkv(1, 2, 2, 50, 50, 8)
    out = hyper(q, k, v, HyperConfig(block_size=4, sample_size=4, min_seq_len=64))
    torch.testing.assert_close(out, naive_attention(q, k, v))


def mean_error(cfg, trials=6, n=512, is_causal=False, metric="spectral"):
    """Error averaged over independent inputs and draws (the batch carries the trials)."""
    q, k, v = random_qkv(trials, 2, 2, n, n, 16, scale=1.5)
    out = hyper(q, k, v, cfg, seed=0, is_causal=is_causal)
    if metric == "spectral":
        return float(spectral_error(out, q, k, v, is_causal=is_causal).mean())
    ref = naive_attention(q, k, v, is_causal=is_causal)
    return sum(relative_error(out[b], ref[b]) for b in range(trials)) / trials


def test_error_falls_as_sample_size_grows():
    e = [mean_error(HyperConfig(block_size=64, sample_size=s, min_seq_len=0)) for s in (16, 64, 256)]
    # Monte-Carlo error ~ 1/sqrt(s): a 4x larger sample should roughly halve it.
    assert e[1] < 0.75 * e[0] and e[2] < 0.75 * e[1], e


def test_error_falls_as_block_size_grows():
    e = [mean_error(HyperConfig(block_size=b, sample_size=32, min_seq_len=0), metric="frob")
         for b in (32, 128, 256)]
    assert e[2] < e[1] < e[0], e


def test_causal_error_falls_with_budget():
    lo = mean_error(HyperConfig(block_size=16, sample_size=16, min_seq_len=64), is_causal=True)
    hi = mean_error(HyperConfig(block_size=64, sample_size=128, min_seq_len=64), is_causal=True)
    assert hi < 0.7 * lo, (lo, hi)


def planted(batch=4, n=512, d=32, strength=4.0, noise=0.1):
    """Each query is a noisy copy (angle ~ noise) of one key: one heavy entry per row."""
    g = {"generator": input_stream("planted"), "dtype": torch.float64}
    k = torch.nn.functional.normalize(torch.randn(batch, 1, n, d, **g), dim=-1)
    q = k[:, :, torch.randperm(n, generator=g["generator"])] + noise / math.sqrt(d) * torch.randn(
        batch, 1, n, d, **g)
    v = torch.randn(batch, 1, n, d, **g)
    return q * strength * math.sqrt(d), k * strength, v


def test_planted_heavy_entries_are_captured_by_the_blocks():
    q, k, v = planted()
    ref = naive_attention(q, k, v)

    def err(block_size, rounds):
        cfg = HyperConfig(block_size=block_size, sample_size=32, min_seq_len=0, lsh_bits=7, sink=0,
                          hash_rounds=rounds)
        return relative_error(hyper(q, k, v, cfg, seed=0), ref)

    sampling_only = err(1, 1)  # blocks of one key cover almost nothing
    one_round, four_rounds = err(32, 1), err(32, 4)
    assert sampling_only > 0.9
    assert one_round < 0.75 * sampling_only and four_rounds < 0.15, (
        sampling_only, one_round, four_rounds)


def test_normaliser_estimate_is_unbiased():
    trials = 300  # independent draws: one per batch entry
    q, k, v = random_qkv(1, 1, 1, 32, 128, 8, scale=1.3)
    _, ref_lse = naive_attention(q, k, v, return_lse=True)
    q, k, v = (t.expand(trials, -1, -1, -1) for t in (q, k, v))
    for sampling in ("uniform", "value_norm"):
        cfg = HyperConfig(block_size=32, sample_size=16, min_seq_len=0, lsh_bits=3, sampling=sampling)
        z = hyper_noncausal(q, k, v, 8 ** -0.5, cfg, gen(0))[1].exp()
        mean, sem = z.mean(0), z.std(0) / math.sqrt(trials)
        # Mean of the estimates within 5 standard errors of the truth on every row.
        assert torch.all((mean - ref_lse[0].exp()).abs() < 5 * sem + 1e-9), sampling


def test_causal_output_never_sees_the_future(torch_generator):
    q, k, v = random_qkv(1, 2, 1, 200, 200, 16)
    cfg = HyperConfig(block_size=16, sample_size=16, min_seq_len=24)
    out = hyper(q, k, v, cfg, seed=5, is_causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 120:] = randn_like(k2[:, :, 120:], torch_generator) * 5
    v2[:, :, 120:] += 50
    out2 = hyper(q, k2, v2, cfg, seed=5, is_causal=True)
    torch.testing.assert_close(out[:, :, :120], out2[:, :, :120])
    assert not torch.allclose(out[:, :, 120:], out2[:, :, 120:])


def test_same_generator_seed_is_deterministic():
    q, k, v = random_qkv(1, 2, 2, 150, 150, 8)
    cfg = HyperConfig(block_size=16, sample_size=16, min_seq_len=0)
    torch.testing.assert_close(hyper(q, k, v, cfg, seed=1), hyper(q, k, v, cfg, seed=1))
    assert not torch.allclose(hyper(q, k, v, cfg, seed=1), hyper(q, k, v, cfg, seed=2))


def test_gradients_close_to_exact_for_large_budget_and_finite_for_small(torch_generator):
    q, k, v = random_qkv(1, 2, 1, 120, 120, 8, requires_grad=True)
    w = torch.randn(1, 2, 120, 8, dtype=torch.float64, generator=torch_generator)
    ref = naive_attention(q, k, v, is_causal=True)
    g_ref = torch.autograd.grad((ref * w).sum(), (q, k, v))
    # Blocks of 16 and every key sampled once with weight 1: exact, and the gradient of
    # every pair outside the blocks flows through the sampled keys and values.
    big = HyperConfig(block_size=16, sample_size=500, min_seq_len=16)
    g = torch.autograd.grad((hyper(q, k, v, big, seed=0, is_causal=True) * w).sum(), (q, k, v))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)
    small = HyperConfig(block_size=8, sample_size=8, min_seq_len=16)
    g = torch.autograd.grad((hyper(q, k, v, small, seed=0, is_causal=True) * w).sum(), (q, k, v))
    # Their accuracy at a small budget: tests/attn/test_sampled_gradients.py.
    assert all(torch.isfinite(a).all() for a in g)


def gradient_errors(method, configs, n=256):
    """Largest relative error of dq, dk, dv against exact, for each config (4 trials in the batch)."""
    q, k, v = random_qkv(4, 1, 1, n, n, 16, requires_grad=True)
    w = torch.randn(4, 1, n, 16, dtype=torch.float64, generator=input_stream("weights"))
    g_ref = torch.autograd.grad((naive_attention(q, k, v) * w).sum(), (q, k, v))
    errs = []
    for cfg in configs:
        out = ks.attention(q, k, v, method=method, config=cfg, generator=gen(0))
        g = torch.autograd.grad((out * w).sum(), (q, k, v))
        errs.append(max(relative_error(a, b) for a, b in zip(g, g_ref)))
    return errs


def test_gradient_error_falls_as_the_budget_grows():
    e = gradient_errors("hyper", [HyperConfig(block_size=b, sample_size=s, min_seq_len=0, sink=0)
                                  for b, s in ((16, 16), (64, 64), (64, 192))])
    # Measured over fresh inputs: about 3.0, 1.45, 0.85.
    assert e[1] < 0.75 * e[0] and e[2] < 0.75 * e[1], e


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2),
                                       (torch.float16, 5e-3)])
def test_dtypes(dtype, tol):
    q, k, v = random_qkv(1, 4, 2, 100, 100, 16, dtype=dtype)
    cfg = HyperConfig.full_budget(100)
    for causal in (False, True):
        out = hyper(q, k, v, cfg, is_causal=causal)
        assert out.dtype == dtype
        assert relative_error(out, naive_attention(q, k, v, is_causal=causal)) < tol
    out = hyper(q, k, v, HyperConfig(block_size=16, sample_size=16, min_seq_len=0))
    assert out.dtype == dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype,big", [(torch.float32, 1e20), (torch.bfloat16, 1e20),
                                       (torch.float16, 3e4), (torch.float64, 1e200)])
def test_huge_values_do_not_break_value_norm_sampling(dtype, big):
    # ‖v_j‖² of such values overflows; the sampling distribution must not.
    q, k, v = random_qkv(1, 2, 2, 128, 128, 8)
    v = (v / v.abs().max() * big).to(dtype)
    cfg = HyperConfig(block_size=16, sample_size=16, min_seq_len=0, sampling="value_norm")
    out = hyper(q.to(dtype), k.to(dtype), v, cfg, seed=0)
    assert torch.isfinite(out).all()


def test_extreme_logits_stay_finite():
    q, k, v = random_qkv(1, 2, 2, 128, 128, 8, scale=100.0)  # logits ~ 1e4
    out, lse = hyper(q, k, v, HyperConfig(block_size=16, sample_size=16, min_seq_len=0),
                     return_lse=True)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()


@pytest.mark.parametrize("field,value,err", [
    ("lsh_bits", 0, ValueError), ("lsh_bits", 31, ValueError), ("block_size", 0, ValueError),
    ("sample_size", -1, ValueError), ("min_seq_len", -1, ValueError), ("hash_rounds", 0, ValueError),
    ("sampling", "importance", ValueError), ("samples_per_key", 2.0, ValueError),
    ("samples_per_key", -0.1, ValueError), ("hash_rounds", 17, ValueError),
    ("block_size", 1.5, TypeError), ("lsh_bits", 7.0, TypeError), ("min_seq_len", None, TypeError),
    ("samples_per_key", "0.1", TypeError), ("sink", -1, ValueError), ("window", -1, ValueError),
    ("sink", 1.0, TypeError),
])
def test_bad_configs_are_rejected(field, value, err):
    with pytest.raises(err, match=field):
        HyperConfig(**{field: value})


def test_config_of_another_method_is_rejected():
    q, k, v = random_qkv(1, 2, 2, 16, 16, 8)
    with pytest.raises(TypeError, match="config for method 'hyper' must be a HyperConfig"):
        ks.attention(q, k, v, method="hyper", config=ks.KDEConfig())


def test_sample_size_scales_with_keys():
    cfg = HyperConfig(sample_size=10, samples_per_key=0.01)
    assert cfg.num_samples(1000) == 20 and cfg.num_samples(10_000) == 110
