import pytest
import torch

import kernelsketch as ks
from kernelsketch.attn.common import exact as exact_module
from kernelsketch.attn.common.exact import exact_partial, flash_lse, partial_attention
from kernelsketch.attn.common.metrics import relative_error

from ..reference import naive_attention, randn_like, random_qkv

SHAPES = [  # (B, Hq, Hkv, N, M, D, Dv)
    (1, 1, 1, 1, 1, 8, 8),
    (2, 4, 2, 37, 37, 16, 16),
    (2, 4, 1, 33, 70, 16, 8),   # cross-attention, more keys, MQA
    (1, 6, 3, 70, 33, 32, 32),  # more queries than keys
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("chunk", [5, 1024])
def test_exact_matches_naive_with_lse(shape, is_causal, chunk):
    B, Hq, Hkv, N, M, D, Dv = shape
    q, k, v = random_qkv(B, Hq, Hkv, N, M, D, Dv)
    out, lse = ks.attention(q, k, v, is_causal=is_causal, return_lse=True,
                            config=ks.ExactConfig(chunk_size=chunk))
    ref, ref_lse = naive_attention(q, k, v, is_causal=is_causal, return_lse=True)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-12)
    assert out.dtype == q.dtype and lse.dtype == torch.float64


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("is_causal", [False, True])
def test_exact_without_lse_uses_sdpa_and_matches(shape, is_causal):
    B, Hq, Hkv, N, M, D, Dv = shape
    q, k, v = random_qkv(B, Hq, Hkv, N, M, D, Dv)
    out = ks.attention(q, k, v, is_causal=is_causal)
    torch.testing.assert_close(out, naive_attention(q, k, v, is_causal=is_causal), rtol=1e-10,
                               atol=1e-12)


def test_causal_rows_without_keys_are_zero_and_lse_is_minus_inf():
    q, k, v = random_qkv(1, 2, 2, 10, 4, 8)
    out, lse = ks.attention(q, k, v, is_causal=True, return_lse=True)
    assert torch.all(out[:, :, :6] == 0) and torch.all(torch.isneginf(lse[:, :, :6]))
    assert torch.isfinite(lse[:, :, 6:]).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2),
                                       (torch.float16, 5e-3)])
def test_low_precision_dtypes(dtype, tol):
    q, k, v = random_qkv(2, 4, 2, 50, 50, 16, dtype=dtype)
    ref = naive_attention(q, k, v, is_causal=True)
    for lse in (False, True):
        out = ks.attention(q, k, v, is_causal=True, return_lse=lse)
        out = out[0] if lse else out
        assert out.dtype == dtype
        err = (out.double() - ref).norm() / ref.norm()
        assert err < tol


def test_scale_argument():
    q, k, v = random_qkv(1, 2, 2, 20, 30, 8)
    out = ks.attention(q, k, v, scale=0.7, return_lse=True)[0]
    torch.testing.assert_close(out, naive_attention(q, k, v, scale=0.7))


def test_extreme_logits_do_not_overflow():
    q, k, v = random_qkv(1, 2, 2, 40, 40, 8, scale=300.0)  # logits ~ 1e5
    out, lse = ks.attention(q, k, v, return_lse=True, is_causal=True)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    torch.testing.assert_close(out, naive_attention(q, k, v, is_causal=True))


def test_gradients_match_naive(torch_generator):
    q, k, v = random_qkv(1, 4, 2, 30, 45, 8, requires_grad=True)
    out, lse = ks.attention(q, k, v, is_causal=True, return_lse=True,
                            config=ks.ExactConfig(chunk_size=7))
    w1, w2 = randn_like(out, torch_generator), randn_like(lse, torch_generator)
    g = torch.autograd.grad((out * w1).sum() + (lse * w2).sum(), (q, k, v))
    ref, ref_lse = naive_attention(q, k, v, is_causal=True, return_lse=True)
    g_ref = torch.autograd.grad((ref * w1).sum() + (ref_lse * w2).sum(), (q, k, v))
    for a, b in zip(g, g_ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)


def test_partial_attention_weights_and_mask(torch_generator):
    q, k, v = random_qkv(1, 1, 1, 6, 9, 4)
    w = torch.rand(9, dtype=torch.float64, generator=torch_generator) + 0.5
    mask = torch.rand(6, 9, generator=torch_generator) > 0.3
    mask[:, 0] = True
    out, lse = partial_attention(q, k, v, scale=0.5, mask=mask, key_log_weights=w.log())
    e = torch.exp(q @ k.transpose(-1, -2) * 0.5) * w * mask
    torch.testing.assert_close(lse, e.sum(-1).log())
    torch.testing.assert_close(out, (e / e.sum(-1, keepdim=True)) @ v)


def test_chunked_memory_path_equals_single_chunk():
    q, k, v = random_qkv(1, 2, 1, 90, 90, 8)
    a = exact_partial(q, k, v, scale=0.3, is_causal=True, chunk_size=8)
    b = exact_partial(q, k, v, scale=0.3, is_causal=True, chunk_size=512)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


# -- SDPA's CPU flash kernel with the log-sum-exp (the fast path of every method) ------------

FLASH_SHAPES = [  # (B, Hq, Hkv, N, M, D, Dv)
    (2, 4, 2, 37, 37, 16, 16),
    (2, 4, 1, 33, 70, 16, 8),   # more keys than queries, MQA, Dv < D
    (1, 6, 3, 70, 33, 32, 32),  # more queries than keys: the first 37 rows see nothing
    (1, 2, 2, 20, 20, 8, 12),   # Dv > D
]


@pytest.mark.parametrize("shape", FLASH_SHAPES)
@pytest.mark.parametrize("is_causal", [False, True])
def test_flash_lse_output_lse_and_both_gradients_equal_the_reference(shape, is_causal,
                                                                    torch_generator):
    B, Hq, Hkv, N, M, D, Dv = shape
    q, k, v = random_qkv(B, Hq, Hkv, N, M, D, Dv, requires_grad=True, generator=torch_generator)
    out, lse = flash_lse(q, k, v, scale=0.3, is_causal=is_causal)
    ref, ref_lse = naive_attention(q, k, v, scale=0.3, is_causal=is_causal, return_lse=True)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(torch.isfinite(lse), torch.isfinite(ref_lse))
    fin = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[fin], ref_lse[fin], rtol=1e-12, atol=1e-12)
    w1 = torch.randn(out.shape, dtype=out.dtype, generator=torch_generator)
    w2 = torch.randn(lse.shape, dtype=lse.dtype, generator=torch_generator)
    # The lse gradient goes through the kernel's backward with dlse folded into Δ.
    g = torch.autograd.grad((out * w1).sum() + (lse[fin] * w2[fin]).sum(), (q, k, v))
    g_ref = torch.autograd.grad((ref * w1).sum() + (ref_lse[fin] * w2[fin]).sum(), (q, k, v))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_flash_lse_additive_mask_weights_and_fully_masked_rows(torch_generator):
    q, k, v = random_qkv(2, 3, 3, 9, 11, 8, requires_grad=True, generator=torch_generator)
    log_w = torch.randn(2, 3, 1, 11, dtype=torch.float64, generator=torch_generator)
    drop = torch.rand(2, 3, 9, 11, generator=torch_generator) < 0.3
    drop[0, 1, 4] = True  # one row sees no key: out 0, lse -inf, no NaN gradient
    mask = log_w.masked_fill(drop, float("-inf"))
    out, lse = flash_lse(q, k, v, scale=0.5, mask=mask)
    kept = partial_attention(q, k, v, scale=0.5, mask=~drop, key_log_weights=log_w[:, :, 0])
    torch.testing.assert_close(out, kept[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, kept[1], rtol=1e-12, atol=1e-12)
    assert torch.isneginf(lse[0, 1, 4]) and torch.all(out[0, 1, 4] == 0)
    fin = torch.isfinite(lse)
    g = torch.autograd.grad(out.sum() + lse[fin].sum(), (q, k, v))
    g_ref = torch.autograd.grad(kept[0].sum() + kept[1][fin].sum(), (q, k, v))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 2e-2),
                                       (torch.float16, 2e-3)])
def test_flash_lse_low_precision_against_float64(dtype, tol, torch_generator):
    q, k, v = random_qkv(1, 4, 2, 64, 64, 16, generator=torch_generator)
    out, lse = flash_lse(q.to(dtype), k.to(dtype), v.to(dtype), scale=0.25, is_causal=True)
    ref, ref_lse = naive_attention(q, k, v, scale=0.25, is_causal=True, return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert relative_error(out, ref) < tol and relative_error(lse, ref_lse) < tol


def test_exact_method_with_lse_takes_the_flash_kernel_in_float32(torch_generator, monkeypatch):
    calls = []
    real = exact_module._FlashCPU.apply
    monkeypatch.setattr(exact_module._FlashCPU, "apply",
                        lambda *a: calls.append(1) or real(*a))
    q, k, v = random_qkv(1, 4, 2, 40, 40, 16, dtype=torch.float32, generator=torch_generator)
    out, lse = ks.attention(q, k, v, is_causal=True, return_lse=True)
    assert calls, "the float32 CPU path must run the flash kernel"
    ref, ref_lse = naive_attention(q, k, v, is_causal=True, return_lse=True)
    assert relative_error(out, ref) < 2e-6 and relative_error(lse, ref_lse) < 2e-6
