import pytest
import torch

import kernelsketch as ks
from kernelsketch.attn.common.exact import exact_partial, partial_attention

from ..reference import naive_attention, random_qkv

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


def test_gradients_match_naive():
    q, k, v = random_qkv(1, 4, 2, 30, 45, 8, requires_grad=True)
    out, lse = ks.attention(q, k, v, is_causal=True, return_lse=True,
                            config=ks.ExactConfig(chunk_size=7))
    w1, w2 = torch.randn_like(out), torch.randn_like(lse)
    g = torch.autograd.grad((out * w1).sum() + (lse * w2).sum(), (q, k, v))
    ref, ref_lse = naive_attention(q, k, v, is_causal=True, return_lse=True)
    g_ref = torch.autograd.grad((ref * w1).sum() + (ref_lse * w2).sum(), (q, k, v))
    for a, b in zip(g, g_ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)


def test_partial_attention_weights_and_mask():
    q, k, v = random_qkv(1, 1, 1, 6, 9, 4)
    w = torch.rand(9, dtype=torch.float64) + 0.5
    mask = torch.rand(6, 9) > 0.3
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
