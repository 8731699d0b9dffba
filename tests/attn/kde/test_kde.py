import math

import pytest
import torch

import kernelsketch as ks
from kernelsketch.attn.common.metrics import relative_error, spectral_error
from kernelsketch.attn.common.sortlsh import block_diagonal_attention
from kernelsketch.attn.kde import KDEConfig, amm_probabilities, kde_noncausal
from kernelsketch.attn.kde import naive as kde_module
from kernelsketch.sketch.lsh import AngularLSH

from ..hyper.test_hyper import gradient_errors, planted
from ..reference import naive_attention, randn_like, random_qkv


def kde(q, k, v, cfg, seed=0, **kw):
    return ks.attention(q, k, v, method="kde", config=cfg, generator=torch.Generator().manual_seed(seed),
                        **kw)


@pytest.mark.parametrize("shape", [(1, 2, 2, 100, 100, 16), (2, 4, 2, 77, 130, 16),
                                   (1, 3, 1, 130, 77, 8)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_exact_when_blocks_or_samples_cover_everything(shape, is_causal):
    B, Hq, Hkv, N, M, D = shape
    q, k, v = random_qkv(B, Hq, Hkv, N, M, D)
    ref, ref_lse = naive_attention(q, k, v, is_causal=is_causal, return_lse=True)
    fin = torch.isfinite(ref_lse)
    for cfg in (KDEConfig.full_budget(max(N, M)),
                KDEConfig(block_size=8, sample_size=10_000, min_seq_len=10, lsh_bits=3)):
        out, lse = kde(q, k, v, cfg, is_causal=is_causal, return_lse=True)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(lse[fin], ref_lse[fin])
    out = kde(q, k, v, KDEConfig(block_size=8, sample_size=10_000, min_seq_len=10, lsh_bits=3),
              is_causal=is_causal, scale=0.3)
    torch.testing.assert_close(out, naive_attention(q, k, v, scale=0.3, is_causal=is_causal))


def test_amm_distribution_is_the_papers_with_exact_density_estimates(monkeypatch):
    # With every key and row "sampled" once with weight 1 the two KDEs are exact, and the
    # distribution must be ½‖(D⁻¹A)_{:,j}‖²/‖D⁻¹A‖_F² + ½‖[v_j, 1]‖²/‖[V, 1]‖_F², the
    # column norms taken over the pairs outside the LSH blocks.
    def everything(n, m, *, batch_shape, device, generator):
        return torch.arange(n).expand(*batch_shape, n), torch.ones(*batch_shape, n)

    monkeypatch.setattr(kde_module, "uniform_sample", everything)
    q, k, v = random_qkv(2, 1, 1, 48, 80, 8, scale=1.5)
    scale = 8 ** -0.5
    lsh = AngularLSH(8, 3, generator=torch.Generator().manual_seed(0))
    _, _, blk_q, blk_k = block_diagonal_attention(q, k, v, lsh, 4, scale=scale)
    cfg = KDEConfig(block_size=20, sample_size=16, min_seq_len=0)
    got = amm_probabilities(q, k, v, [(blk_q, blk_k)], scale, cfg, None)
    p = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
    outside = blk_q.unsqueeze(-1) != blk_k.unsqueeze(-2)
    col = ((p * outside) ** 2).sum(-2)
    vrow = (v ** 2).sum(-1) + 1
    want = 0.5 * col / col.sum(-1, keepdim=True) + 0.5 * vrow / vrow.sum(-1, keepdim=True)
    torch.testing.assert_close(got, want)


def test_amm_distribution_with_uneven_and_empty_blocks(seed, monkeypatch):
    # Block ids of any layout (blocks of unequal sizes, rows whose block holds no key, a
    # block of one key): the distribution is the paper's, as above, with exact estimates.
    def everything(n, m, *, batch_shape, device, generator):
        return torch.arange(n).expand(*batch_shape, n), torch.ones(*batch_shape, n)

    monkeypatch.setattr(kde_module, "uniform_sample", everything)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 1, n, 8, generator=g, dtype=torch.float64) for n in (40, 70, 70))
    blk_k = torch.randint(0, 4, (2, 1, 70), generator=g)
    blk_k[..., 0] = 5  # block 5: one key; block 4: no key, the block of row 0
    blk_q = torch.randint(0, 6, (2, 1, 40), generator=g)
    blk_q[..., :3] = torch.tensor([4, 5, 0])
    cfg = KDEConfig(block_size=20, sample_size=16, min_seq_len=0)
    got = amm_probabilities(q, k, v, [(blk_q, blk_k)], 0.4, cfg, None)
    p = torch.softmax(q @ k.transpose(-1, -2) * 0.4, dim=-1)
    outside = blk_q.unsqueeze(-1) != blk_k.unsqueeze(-2)
    col = ((p * outside) ** 2).sum(-2)
    vrow = (v ** 2).sum(-1) + 1
    want = 0.5 * col / col.sum(-1, keepdim=True) + 0.5 * vrow / vrow.sum(-1, keepdim=True)
    torch.testing.assert_close(got, want)


def test_spectral_error_falls_like_inverse_sqrt_of_sample_size():
    q, k, v = random_qkv(6, 2, 2, 512, 512, 16, scale=1.5)
    errs = []
    for s in (16, 64, 256):
        cfg = KDEConfig(block_size=64, sample_size=s, kde_samples=128, min_seq_len=0)
        errs.append(float(spectral_error(kde(q, k, v, cfg), q, k, v).mean()))
    # 4x the samples: the 1/sqrt(s) rate predicts a factor 0.5; allow up to 0.8.
    assert errs[1] < 0.8 * errs[0] and errs[2] < 0.8 * errs[1], errs
    assert errs[2] < 0.5


def test_importance_distribution_beats_uniform_on_heavy_values():
    # A few keys carry values 100x larger: the AMM distribution (‖v_j‖² term)
    # samples them, uniform sampling mostly misses them.
    q, k, v = random_qkv(8, 1, 1, 512, 512, 16)
    v[:, :, :8] *= 100.0
    ref = naive_attention(q, k, v)
    kde_err = relative_error(kde(q, k, v, KDEConfig(block_size=32, sample_size=64, min_seq_len=0,
                                                    sink=0)),
                             ref)
    uni = ks.attention(q, k, v, method="hyper", generator=torch.Generator().manual_seed(0),
                       config=ks.HyperConfig(block_size=32, sample_size=64, min_seq_len=0, sink=0))
    # In repeated fresh draws the ratio stayed within about 0.25..0.55.
    assert kde_err < 0.75 * relative_error(uni, ref), kde_err


def test_planted_heavy_entries_are_captured_by_the_lsh_part():
    q, k, v = planted(batch=4)
    ref = naive_attention(q, k, v)
    blocks = relative_error(kde(q, k, v, KDEConfig(block_size=32, sample_size=32, lsh_bits=7, sink=0,
                                                   min_seq_len=0)), ref)
    no_blocks = relative_error(kde(q, k, v, KDEConfig(block_size=1, sample_size=32, lsh_bits=7, sink=0,
                                                      min_seq_len=0)), ref)
    assert blocks < 0.75 * no_blocks, (blocks, no_blocks)


def test_denominator_estimate_is_unbiased_and_positive():
    trials = 300  # one independent draw per batch entry
    q, k, v = random_qkv(1, 1, 1, 32, 128, 8, scale=1.3)
    _, ref_lse = naive_attention(q, k, v, return_lse=True)
    q, k, v = (t.expand(trials, -1, -1, -1) for t in (q, k, v))
    cfg = KDEConfig(block_size=32, sample_size=16, kde_samples=16, lsh_bits=3, min_seq_len=0)
    lse = kde_noncausal(q, k, v, 8 ** -0.5, cfg, torch.Generator().manual_seed(0))[1]
    assert torch.isfinite(lse).all()
    z = lse.exp()
    mean, sem = z.mean(0), z.std(0) / math.sqrt(trials)
    assert torch.all((mean - ref_lse[0].exp()).abs() < 5 * sem + 1e-9)


def test_causal_output_never_sees_the_future(torch_generator):
    q, k, v = random_qkv(1, 2, 1, 200, 200, 16)
    cfg = KDEConfig(block_size=16, sample_size=16, kde_samples=16, min_seq_len=24)
    out = kde(q, k, v, cfg, seed=5, is_causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 120:] = randn_like(k2[:, :, 120:], torch_generator) * 5
    v2[:, :, 120:] += 50
    out2 = kde(q, k2, v2, cfg, seed=5, is_causal=True)
    torch.testing.assert_close(out[:, :, :120], out2[:, :, :120])
    assert not torch.allclose(out[:, :, 120:], out2[:, :, 120:])


def test_exact_at_or_below_min_seq_len_and_approximate_with_zero():
    q, k, v = random_qkv(1, 2, 2, 50, 50, 8)
    ref = naive_attention(q, k, v)
    small = {"block_size": 4, "sample_size": 4, "kde_samples": 4}
    torch.testing.assert_close(kde(q, k, v, KDEConfig(**small, min_seq_len=50)), ref)
    assert relative_error(kde(q, k, v, KDEConfig(**small, min_seq_len=0)), ref) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_extreme_logits_never_overflow(dtype, sign):
    q, k, v = random_qkv(1, 2, 2, 128, 128, 8, scale=100.0)  # logits of order ±1e4
    out, lse = kde((sign * q).to(dtype), k.to(dtype), v.to(dtype),
                   KDEConfig(block_size=16, sample_size=16, kde_samples=16, min_seq_len=0),
                   return_lse=True)
    assert out.dtype == dtype and torch.isfinite(out).all() and torch.isfinite(lse).all()


@pytest.mark.parametrize("dtype,big", [(torch.float32, 1e20), (torch.bfloat16, 1e20),
                                       (torch.float16, 3e4), (torch.float64, 1e200)])
def test_huge_values_do_not_break_the_sampling_distribution(dtype, big):
    # ‖v_j‖² of such values overflows; the AMM distribution must not.
    q, k, v = random_qkv(1, 2, 2, 128, 128, 8)
    v = (v / v.abs().max() * big).to(dtype)
    cfg = KDEConfig(block_size=16, sample_size=16, kde_samples=16, min_seq_len=0)
    assert torch.isfinite(kde(q.to(dtype), k.to(dtype), v, cfg)).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2),
                                       (torch.float16, 5e-3)])
def test_dtypes_at_full_budget(dtype, tol):
    q, k, v = random_qkv(1, 4, 2, 100, 100, 16, dtype=dtype)
    for causal in (False, True):
        out = kde(q, k, v, KDEConfig.full_budget(100), is_causal=causal)
        assert out.dtype == dtype
        assert relative_error(out, naive_attention(q, k, v, is_causal=causal)) < tol


def test_gradients_flow_and_match_exact_at_full_sample(torch_generator):
    q, k, v = random_qkv(1, 2, 1, 96, 96, 8, requires_grad=True)
    w = torch.randn(1, 2, 96, 8, dtype=torch.float64, generator=torch_generator)
    ref = naive_attention(q, k, v, is_causal=True)
    g_ref = torch.autograd.grad((ref * w).sum(), (q, k, v))
    cfg = KDEConfig(block_size=16, sample_size=1000, min_seq_len=16)
    g = torch.autograd.grad((kde(q, k, v, cfg, is_causal=True) * w).sum(), (q, k, v))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)
    small = KDEConfig(block_size=8, sample_size=8, kde_samples=8, min_seq_len=16)
    g = torch.autograd.grad((kde(q, k, v, small, is_causal=True) * w).sum(), (q, k, v))
    # Their accuracy at a small budget: tests/attn/test_sampled_gradients.py.
    assert all(torch.isfinite(a).all() for a in g)


def test_gradient_error_falls_as_the_budget_grows():
    e = gradient_errors("kde", [KDEConfig(block_size=b, sample_size=s, min_seq_len=0, sink=0)
                                for b, s in ((16, 16), (64, 64), (64, 192))])
    # Measured over fresh inputs: about 3.1, 1.5, 0.86.
    assert e[1] < 0.75 * e[0] and e[2] < 0.75 * e[1], e


@pytest.mark.parametrize("field,value,err", [
    ("lsh_bits", 0, ValueError), ("block_size", 0, ValueError), ("sample_size", -1, ValueError),
    ("kde_samples", 0, ValueError), ("min_seq_len", -5, ValueError), ("block_size", "8", TypeError),
    ("lsh_bits", 31, ValueError), ("sample_size", 2.0, TypeError), ("kde_samples", None, TypeError),
    ("sink", -1, ValueError), ("window", -2, ValueError), ("window", "8", TypeError),
])
def test_bad_configs_are_rejected(field, value, err):
    with pytest.raises(err, match=field):
        KDEConfig(**{field: value})


def test_config_of_another_method_is_rejected():
    q, k, v = random_qkv(1, 2, 2, 16, 16, 8)
    with pytest.raises(TypeError, match="config for method 'kde' must be a KDEConfig"):
        ks.attention(q, k, v, method="kde", config=ks.HyperConfig())
