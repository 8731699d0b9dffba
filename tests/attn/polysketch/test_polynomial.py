import math

import pytest
import torch
import torch.nn.functional as F

import kernelsketch as ks
from kernelsketch.attn.common.merge import merge_partials
from kernelsketch.attn.polysketch import PolynomialConfig

from ..reference import randn_like, random_qkv


def naive_polynomial(q, k, v, *, degree=4, scale=None, is_causal=False, normalize=True,
                     return_lse=False):
    """(scale q·k)^p / (1 + Σ_j (scale q·k_j)^p) v in float64, materialised, GQA by repetition."""
    q, k, v = q.double(), k.double(), v.double()
    if normalize:
        q, k = F.layer_norm(q, q.shape[-1:]), F.layer_norm(k, k.shape[-1:])
    Hq, Hkv = q.shape[1], k.shape[1]
    k, v = k.repeat_interleave(Hq // Hkv, 1), v.repeat_interleave(Hq // Hkv, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    w = (q @ k.transpose(-1, -2) * scale) ** degree
    N, M = w.shape[-2:]
    if is_causal:
        w = w * torch.ones(N, M, dtype=torch.bool).tril(M - N)
    den = 1 + w.sum(-1)
    out = (w @ v) / den.unsqueeze(-1)
    return (out, torch.log(den)) if return_lse else out


SHAPES = [  # (B, Hq, Hkv, N, M, D, Dv)
    (1, 1, 1, 1, 1, 8, 8),
    (2, 4, 2, 37, 37, 16, 16),
    (2, 4, 1, 33, 70, 16, 8),   # more keys than queries, MQA
    (1, 6, 3, 70, 33, 8, 12),   # more queries than keys
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("chunk", [16, 1024])
def test_polynomial_matches_naive_with_lse(shape, is_causal, chunk):
    B, Hq, Hkv, N, M, D, Dv = shape
    q, k, v = random_qkv(B, Hq, Hkv, N, M, D, Dv)
    cfg = PolynomialConfig(chunk_size=chunk)
    out, lse = ks.attention(q, k, v, method="polynomial", is_causal=is_causal, config=cfg,
                            return_lse=True)
    ref, ref_lse = naive_polynomial(q, k, v, is_causal=is_causal, return_lse=True)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-12)
    assert out.dtype == q.dtype and lse.dtype == torch.float64


@pytest.mark.parametrize("degree", [2, 6, 8])
@pytest.mark.parametrize("normalize", [False, True])
def test_other_degrees_and_unnormalised(degree, normalize):
    q, k, v = random_qkv(1, 2, 2, 20, 25, 8)
    cfg = PolynomialConfig(degree=degree, normalize=normalize)
    out = ks.attention(q, k, v, method="polynomial", is_causal=True, config=cfg, scale=0.3)
    ref = naive_polynomial(q, k, v, degree=degree, normalize=normalize, is_causal=True, scale=0.3)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def test_lse_is_a_partial_over_keys_and_sink_that_merges_exactly():
    # (out, lse) over keys A ∪ {sink} merged with a sink-free partial over keys B
    # equals polynomial attention over A ∪ B.
    q, k, v = random_qkv(1, 2, 2, 15, 40, 8)
    out_a, lse_a = ks.attention(q, k[:, :, :25], v[:, :, :25], method="polynomial",
                                return_lse=True)
    qn, kn = F.layer_norm(q, (8,)), F.layer_norm(k[:, :, 25:], (8,))
    w = (qn @ kn.transpose(-1, -2) / math.sqrt(8)) ** 4
    out_b, lse_b = (w @ v[:, :, 25:]) / w.sum(-1, keepdim=True), torch.log(w.sum(-1))
    out, lse = merge_partials(out_a, lse_a, out_b, lse_b)
    ref, ref_lse = naive_polynomial(q, k, v, return_lse=True)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-12)


def test_rows_without_keys_give_zero_output_and_zero_lse():
    q, k, v = random_qkv(1, 2, 2, 10, 4, 8)
    out, lse = ks.attention(q, k, v, method="polynomial", is_causal=True, return_lse=True)
    assert torch.all(out[:, :, :6] == 0) and torch.all(lse[:, :, :6] == 0)
    assert torch.all(lse[:, :, 6:] > 0)


def test_weights_are_non_negative_so_output_is_a_sub_convex_combination():
    # out_i = Σ_j a_ij v_j with a_ij >= 0 and Σ_j a_ij < 1: with v = 1, 0 < out < 1.
    q, k, _ = random_qkv(2, 4, 2, 30, 30, 16)
    out = ks.attention(q, k, torch.ones_like(k), method="polynomial", is_causal=True)
    assert torch.all(out > 0) and torch.all(out < 1)


def test_gradients_match_naive(torch_generator):
    q, k, v = random_qkv(1, 4, 2, 19, 23, 8, requires_grad=True)
    out, lse = ks.attention(q, k, v, method="polynomial", is_causal=True, return_lse=True,
                            config=PolynomialConfig(chunk_size=6))
    w1, w2 = randn_like(out, torch_generator), randn_like(lse, torch_generator)
    g = torch.autograd.grad((out * w1).sum() + (lse * w2).sum(), (q, k, v))
    ref, ref_lse = naive_polynomial(q, k, v, is_causal=True, return_lse=True)
    g_ref = torch.autograd.grad((ref * w1).sum() + (ref_lse * w2).sum(), (q, k, v))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_low_precision_dtypes(dtype, tol):
    q, k, v = random_qkv(2, 4, 2, 50, 50, 16, dtype=dtype)
    out = ks.attention(q, k, v, method="polynomial", is_causal=True)
    ref = naive_polynomial(q, k, v, is_causal=True)
    assert out.dtype == dtype
    assert (out.double() - ref).norm() / ref.norm() < tol


BAD_CONFIGS = [
    ({"degree": 3}, ValueError, "degree must be even"),
    ({"degree": 0}, ValueError, "degree must be >= 2"),
    ({"degree": 4.0}, TypeError, "degree must be an int"),
    ({"degree": 10**12}, ValueError, "degree must be <= 64, got 1000000000000"),
    ({"normalize": 1}, TypeError, "normalize must be a bool"),
    ({"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
]


@pytest.mark.parametrize("kwargs,err,text", BAD_CONFIGS, ids=[str(b[0]) for b in BAD_CONFIGS])
def test_bad_config_is_rejected(kwargs, err, text):
    with pytest.raises(err, match=text):
        PolynomialConfig(**kwargs)


def test_wrong_config_class_is_rejected():
    q, k, v = random_qkv(1, 2, 2, 8, 8, 4)
    with pytest.raises(TypeError, match="must be a PolynomialConfig"):
        ks.attention(q, k, v, method="polynomial", config=ks.ExactConfig())


def stable_polynomial(q, k, v, *, degree, scale, is_causal=False, normalize=True):
    """float64 polynomial attention from log-weights (no overflow at any scale): (out, lse)."""
    q, k, v = q.double(), k.double(), v.double()
    if normalize:
        q, k = F.layer_norm(q, q.shape[-1:]), F.layer_norm(k, k.shape[-1:])
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    logw = degree * torch.log((q @ k.transpose(-1, -2)).abs() * scale)
    if is_causal:
        N, M = logw.shape[-2:]
        logw = logw.masked_fill(~torch.ones(N, M, dtype=torch.bool).tril(M - N), float("-inf"))
    sink = torch.zeros_like(logw[..., :1])  # the 1 of the denominator, value 0
    lse = torch.logsumexp(torch.cat((sink, logw), -1), -1)
    return torch.exp(logw - lse.unsqueeze(-1)) @ v, lse


@pytest.mark.parametrize("scale", [1e-30, 1e-3, 1e3, 1e10, 1e30])
@pytest.mark.parametrize("degree", [4, 16, 64])
@pytest.mark.parametrize("is_causal", [False, True])
def test_any_scale_and_degree_give_the_finite_exact_result(scale, degree, is_causal):
    # (scale q·k)^p overflowed float32 (NaN at scale=1e10, p=4): the weights are homogeneous,
    # so the inputs are shrunk into range and e^shrink restored analytically.
    q, k, v = random_qkv(1, 4, 2, 24, 24, 8, dtype=torch.float32)
    cfg = PolynomialConfig(degree=degree, chunk_size=16)
    out, lse = ks.attention(q, k, v, method="polynomial", is_causal=is_causal, scale=scale,
                            config=cfg, return_lse=True)
    ref, ref_lse = stable_polynomial(q, k, v, degree=degree, scale=scale, is_causal=is_causal)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    # float32 rounding of the scores, raised to the power p
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-6 * degree)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-6 * degree, atol=1e-6)


def test_huge_scale_gradients_are_finite_and_match_float64():
    q, k, v = random_qkv(1, 2, 1, 16, 16, 8, dtype=torch.float64, requires_grad=True)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    w = torch.linspace(-1, 1, 16 * 8, dtype=torch.float64).reshape(16, 8)
    for inputs, dtype in (((q, k, v), torch.float64), ((q32, k32, v32), torch.float32)):
        out = ks.attention(*inputs, method="polynomial", scale=1e10, is_causal=True)
        (out * w.to(dtype)).sum().backward()
    for a, b in ((q, q32), (k, k32), (v, v32)):
        assert torch.isfinite(b.grad).all()
        torch.testing.assert_close(b.grad.double(), a.grad, rtol=1e-3, atol=1e-4)


def test_ordinary_inputs_are_not_rescaled():
    from kernelsketch.attn.polysketch.polynomial import bounded_inputs

    q, k, v = random_qkv(2, 4, 2, 30, 30, 16, dtype=torch.float32, scale=3.0)
    qs, ks_, shrink = bounded_inputs(q, k, v, scale=0.25, degree=4)
    assert torch.equal(qs, q * 0.5) and torch.equal(ks_, k * 0.5)
    assert torch.equal(shrink, torch.zeros_like(shrink))


@pytest.mark.parametrize("is_causal", [False, True])
def test_rescaled_sums_equal_the_plain_ones(is_causal):
    # polynomial_forward takes the rescaled path only where the weights could overflow:
    # on ordinary inputs both paths give the same sums (float64).
    from kernelsketch.attn.polysketch.polynomial import polynomial_partial

    q, k, v = random_qkv(2, 4, 2, 33, 41, 8, scale=2.0)
    kw = {"degree": 6, "scale": 0.4, "is_causal": is_causal, "chunk_size": 8}
    num, den, shrink = polynomial_partial(q, k, v, rescale=False, **kw)
    num_r, den_r, shrink_r = polynomial_partial(q, k, v, rescale=True, **kw)
    assert torch.equal(shrink, torch.zeros_like(shrink)) and (shrink_r != 0).any()
    torch.testing.assert_close(num_r * shrink_r.exp().unsqueeze(-1), num, rtol=1e-12,
                               atol=1e-12 * float(num.abs().max()))  # num cancels: an atol
    torch.testing.assert_close(den_r * shrink_r.exp(), den, rtol=1e-12, atol=0)


@pytest.mark.parametrize("magnitude", [1e-20, 1e20])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("is_causal", [False, True])
def test_huge_and_tiny_inputs_give_the_exact_result(magnitude, normalize, is_causal):
    # float32 q, k of 1e20: the layer norm's variance and q·k overflowed (NaN).
    q, k, v = random_qkv(1, 4, 2, 24, 24, 8, dtype=torch.float32)
    q, k = q * magnitude, k * magnitude
    cfg = PolynomialConfig(normalize=normalize, chunk_size=16)
    out, lse = ks.attention(q, k, v, method="polynomial", is_causal=is_causal, config=cfg,
                            return_lse=True)
    ref, ref_lse = stable_polynomial(q, k, v, degree=4, scale=8 ** -0.5, is_causal=is_causal,
                                     normalize=normalize)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_norm_of_rows_with_subnormal_squares_is_exact(dtype):
    # Rows whose norm is positive but below sqrt(d · tiny) have subnormal squares: one
    # pass gave log ‖x‖ 1.8e-3 off in float32 (entries 3e-22, d = 64). _log_norm rescales
    # them; ordinary and tiny rows in one tensor, each within rounding of the exact value.
    from kernelsketch.attn.polysketch.polynomial import _log_norm

    tiny = torch.finfo(dtype).tiny
    d = 64
    rows = [1.0, 3e-22 if dtype == torch.float32 else 3e-162,  # squares subnormal
            0.5 * math.sqrt(tiny),                            # norm below sqrt(d·tiny)
            4.0 * math.sqrt(tiny)]                            # norm above: one pass exact
    # Equal entries: their squares' rounding errors add up instead of averaging out.
    x = torch.tensor(rows, dtype=dtype).unsqueeze(-1).expand(len(rows), d).contiguous()
    x64 = x.double()  # the same values; rescaled, as float64 squares of 3e-162 underflow too
    a = x64.abs().amax(-1, keepdim=True)
    want = (a.log() + (x64 / a).norm(dim=-1, keepdim=True).log()).squeeze(-1)
    # |log ‖x‖| <= 750: its own rounding is <= 750 eps; 2x margin. The old guard (n > 0) was
    # 1.8e-3 (1.5e4 eps) off in float32, 0.047 in float64.
    tol = 1500 * torch.finfo(dtype).eps
    torch.testing.assert_close(_log_norm(x).double(), want, rtol=0, atol=tol)
