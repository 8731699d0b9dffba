"""Which exact implementation runs, and the fused paths against the float64 oracle (issue 22).

exact.py holds three implementations of the same ``(out, lse)``: SDPA's CPU flash kernel
(:func:`flash_lse`, gate :func:`flash_applies`), SDPA's CUDA flash kernel for half-precision
inference (``_flash_with_lse``, gate ``_use_flash``) and the chunked torch reference
(:func:`exact_partial`). These tests pin each gate by a truth table, check every path's
output against the float64 oracle on the same (rounded) inputs, and check the arguments
(scale, causal flag, masks, chunk size) reach the kernels.

The CUDA path cannot run on this CPU-only machine: ``_CudaLike`` tensors report
``is_cuda`` to the gate (the CPU gate turned off) and ``_fake_cuda_flash`` stands in for the CUDA kernel, following its
schema (``aten::_scaled_dot_product_flash_attention``: one head count, top-left causal,
dropout, debug mask, a 9-tuple whose first two entries are out and lse) and computing it in
float64. ``test_cuda_flash_path_on_a_gpu`` runs the real kernel where CUDA exists.

Tolerances of the low-precision paths are rounding bounds, measured: with u the unit
roundoff of the dtype (2^-24 float32, 2^-8 bfloat16, 2^-11 float16) and P|V| the oracle's
attention applied to |v|, each output entry stays within c_out·u·(P|V|)_i of the oracle
and each lse within c_lse·2^-24·(1 + |lse_i|). Measured maxima over 300 seeds (GQA, Dv < D,
causal N < M and N = M, scale 0.3): float32 14.6 and 3.5,
bfloat16 1.58 and 1025, float16 1.66 and 1006 (the kernel rounds P to the input dtype before
P·V, so the half-precision output error is about one rounding of P and one of the output;
its lse carries float32 rounding of the exponentials' sum). The bounds below take about 4x
margin: a wrong scale, mask or causal flag moves entries by O(1).
"""

from __future__ import annotations

import pytest
import torch

import kernelsketch as ks
from kernelsketch.attn.common import exact as exact_module
from kernelsketch.attn.common.exact import (
    ExactConfig,
    exact_forward,
    exact_lse,
    exact_partial,
    flash_applies,
    flash_lse,
    partial_attention,
)
from kernelsketch.attn.common.gqa import gather_rows

UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
OUT_FACTOR = {torch.float32: 64.0, torch.bfloat16: 6.0, torch.float16: 6.0}
LSE_FACTOR = {torch.float32: 16.0, torch.bfloat16: 4096.0, torch.float16: 4096.0}
LOW = [torch.float32, torch.bfloat16, torch.float16]


def _qkv(generator, shape, dtype=torch.float64, requires_grad=False):
    B, Hq, Hkv, N, M, D, Dv = shape
    q = torch.randn(B, Hq, N, D, dtype=torch.float64, generator=generator).to(dtype)
    k = torch.randn(B, Hkv, M, D, dtype=torch.float64, generator=generator).to(dtype)
    v = torch.randn(B, Hkv, M, Dv, dtype=torch.float64, generator=generator).to(dtype)
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    return q, k, v


def _oracle(q, k, v, *, scale, is_causal=False, mask=None, top_left=False):
    """float64 (out, lse, P|V|) of the given (already rounded) inputs; GQA by repetition;
    causal bottom-right (top-left with ``top_left``); ``mask`` additive."""
    q, k, v = q.double(), k.double(), v.double()
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    s = q @ k.transpose(-1, -2) * scale
    if mask is not None:
        s = s + mask.double()
    N, M = s.shape[-2:]
    if is_causal:
        keep = torch.ones(N, M, dtype=torch.bool).tril(0 if top_left else M - N)
        s = s.masked_fill(~keep, float("-inf"))
    p = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)
    return p @ v, torch.logsumexp(s, dim=-1), p @ v.abs()


def _assert_within_rounding(out, lse, ref, ref_lse, pv, dtype):
    """out and lse within the measured rounding bounds of ``dtype`` (module docstring)."""
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse))
    live = torch.isfinite(ref_lse)
    err = (out.double() - ref).abs()
    bound = OUT_FACTOR[dtype] * UNIT_ROUNDOFF[dtype] * pv + 1e-30
    assert bool((err <= bound)[live].all()), float((err / bound)[live].max())
    assert bool((out[~live] == 0).all())
    lerr = (lse.double() - ref_lse).abs()[live]
    lbound = LSE_FACTOR[dtype] * 2.0**-24 * (1 + ref_lse.abs()[live])
    assert bool((lerr <= lbound).all()), float((lerr / lbound).max())


# -- the gates ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_flash_applies_truth_table(device, dtype, requires_grad):
    q = torch.empty(2, 3, 5, 8, dtype=dtype, device=device, requires_grad=requires_grad)
    expected = device == "cpu" and dtype != torch.float64  # grad does not matter: differentiable
    assert flash_applies(q) is expected


def test_flash_applies_rejects_integer_tensors():
    assert flash_applies(torch.zeros(1, 1, 2, 4, dtype=torch.int64)) is False


class _Spec:
    """What ``_use_flash`` reads of a tensor: device, dtype, shape, requires_grad."""

    def __init__(self, shape, dtype=torch.float16, is_cuda=True, requires_grad=False):
        self.shape, self.dtype, self.is_cuda = torch.Size(shape), dtype, is_cuda
        self.requires_grad = requires_grad


# (case, q shape, kv heads, M, Dv, dtype, is_cuda, causal, requires_grad of q/k/v, expected)
# B=2, Hq=4, N=300 (> 256, not a multiple of 8), D=64 unless the case changes one of them.
_GATE = [
    ("base", (2, 4, 300, 64), 2, 300, 64, torch.float16, True, False, (0, 0, 0), True),
    ("bfloat16", (2, 4, 300, 64), 2, 300, 64, torch.bfloat16, True, False, (0, 0, 0), True),
    ("float32", (2, 4, 300, 64), 2, 300, 64, torch.float32, True, False, (0, 0, 0), False),
    ("cpu", (2, 4, 300, 64), 2, 300, 64, torch.float16, False, False, (0, 0, 0), False),
    ("Dv != D", (2, 4, 300, 64), 2, 300, 32, torch.float16, True, False, (0, 0, 0), False),
    ("Dv != D, Dv = N", (2, 4, 300, 64), 2, 300, 300, torch.float16, True, False, (0, 0, 0),
     False),
    ("Dv != D, Dv = Hq", (2, 4, 300, 64), 2, 300, 4, torch.float16, True, False, (0, 0, 0),
     False),
    ("D = 256", (2, 4, 300, 256), 2, 300, 256, torch.float16, True, False, (0, 0, 0), True),
    ("D = 264", (2, 4, 300, 264), 2, 300, 264, torch.float16, True, False, (0, 0, 0), False),
    ("D = 8", (2, 4, 300, 8), 2, 300, 8, torch.float16, True, False, (0, 0, 0), True),
    ("D = 12", (2, 4, 300, 12), 2, 300, 12, torch.float16, True, False, (0, 0, 0), False),
    ("D = 72", (2, 4, 300, 72), 2, 300, 72, torch.float16, True, False, (0, 0, 0), True),
    ("N < 256", (2, 4, 40, 64), 2, 40, 64, torch.float16, True, False, (0, 0, 0), True),
    ("non-causal N != M", (2, 4, 300, 64), 2, 100, 64, torch.float16, True, False, (0, 0, 0),
     True),
    ("causal N = M", (2, 4, 300, 64), 2, 300, 64, torch.float16, True, True, (0, 0, 0), True),
    ("causal N != M", (2, 4, 300, 64), 2, 100, 64, torch.float16, True, True, (0, 0, 0), False),
    ("causal N = M != D", (2, 4, 40, 64), 2, 40, 64, torch.float16, True, True, (0, 0, 0),
     True),
    ("causal M = D != N", (2, 4, 40, 64), 2, 64, 64, torch.float16, True, True, (0, 0, 0),
     False),
    ("q requires grad", (2, 4, 300, 64), 2, 300, 64, torch.float16, True, False, (1, 0, 0),
     False),
    ("k requires grad", (2, 4, 300, 64), 2, 300, 64, torch.float16, True, False, (0, 1, 0),
     False),
    ("v requires grad", (2, 4, 300, 64), 2, 300, 64, torch.float16, True, False, (0, 0, 1),
     False),
    ("all require grad", (2, 4, 300, 64), 2, 300, 64, torch.float16, True, False, (1, 1, 1),
     False),
]


@pytest.mark.parametrize("case", _GATE, ids=[c[0] for c in _GATE])
def test_cuda_flash_gate_truth_table(case):
    _, qs, hkv, M, Dv, dtype, cuda, causal, grads, expected = case
    B, _, _, D = qs
    q = _Spec(qs, dtype, cuda, bool(grads[0]))
    k = _Spec((B, hkv, M, D), dtype, cuda, bool(grads[1]))
    v = _Spec((B, hkv, M, Dv), dtype, cuda, bool(grads[2]))
    with torch.enable_grad():
        assert exact_module._use_flash(q, k, v, causal) is expected
    # Inference (no autograd graph): inputs that require grad take the kernel too.
    with torch.no_grad():
        assert exact_module._use_flash(q, k, v, causal) is (expected or any(grads))


# -- the CUDA half-precision path, emulated ----------------------------------------------


class _CudaLike(torch.Tensor):
    """A CPU tensor whose ``is_cuda`` is True (what ``_use_flash`` reads); the fixture
    ``cuda_kernel_calls`` turns the CPU gate off, as on a CUDA device."""

    @property
    def is_cuda(self):
        return True


class _FakeOp:
    """Calls ``kernel``; every other attribute (``.default``, the schema) is the real
    operator's, for code that registers against it while the fake is installed."""

    def __init__(self, kernel, real):
        self._kernel, self._real = kernel, real

    def __call__(self, *args, **kwargs):
        return self._kernel(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._real, name)


def _fake_cuda_flash(calls):
    """The CUDA flash kernel's contract, computed in float64 on the CPU."""

    def kernel(query, key, value, dropout_p=0.0, is_causal=False, return_debug_mask=False, *,
               scale=None):
        assert all(isinstance(t, torch.Tensor) for t in (query, key, value))
        query, key, value = (t.as_subclass(torch.Tensor) for t in (query, key, value))
        # One head count (the kernel has no GQA), one head size, half precision.
        assert query.shape[1] == key.shape[1] == value.shape[1], "heads must match"
        assert query.shape[-1] == key.shape[-1] == value.shape[-1]
        assert query.shape[2] == key.shape[2] or not is_causal
        assert query.dtype in (torch.float16, torch.bfloat16)
        assert type(dropout_p) is float and dropout_p == 0.0, dropout_p
        assert type(is_causal) is bool and return_debug_mask is False
        assert type(scale) is float, "the caller passes its scale"
        calls.append(is_causal)
        out, lse, _ = _oracle(query, key, value, scale=scale, is_causal=is_causal, top_left=True)
        empty = torch.empty(0)
        return (out.to(query.dtype), lse.float(), empty, empty, query.shape[2], key.shape[2],
                empty, empty, empty)

    return _FakeOp(kernel, torch.ops.aten._scaled_dot_product_flash_attention)


@pytest.fixture
def cuda_kernel_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.ops.aten, "_scaled_dot_product_flash_attention",
                        _fake_cuda_flash(calls))
    monkeypatch.setattr(exact_module, "flash_applies", lambda q: False)
    return calls


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,is_causal", [
    ((2, 4, 2, 40, 40, 16, 16), True),    # GQA, square causal
    ((2, 4, 2, 40, 40, 16, 16), False),
    ((1, 3, 3, 24, 56, 8, 8), False),     # more keys than queries, one head per group
    ((1, 6, 1, 33, 17, 16, 16), False),   # MQA, more queries than keys
])
def test_cuda_flash_path_matches_the_oracle(dtype, shape, is_causal, torch_generator,
                                            cuda_kernel_calls):
    q, k, v = (t.as_subclass(_CudaLike) for t in _qkv(torch_generator, shape, dtype))
    out, lse = exact_lse(q, k, v, scale=0.3, is_causal=is_causal)
    assert cuda_kernel_calls == [is_causal]
    ref, ref_lse, pv = _oracle(q, k, v, scale=0.3, is_causal=is_causal)
    assert out.shape == ref.shape and lse.shape == ref_lse.shape
    # exact_lse's contract on every path: out in the accumulation dtype, as the lse.
    assert out.dtype == lse.dtype == torch.float32
    _assert_within_rounding(out, lse, ref, ref_lse, pv, dtype)


def test_cuda_flash_path_not_taken_for_causal_rectangles(torch_generator, cuda_kernel_calls):
    """The CUDA kernel aligns causal masks top-left: N != M takes the chunked path."""
    q, k, v = _qkv(torch_generator, (1, 4, 2, 20, 32, 16, 16), torch.float16)
    q, k, v = (t.as_subclass(_CudaLike) for t in (q, k, v))
    out, lse = exact_lse(q, k, v, scale=0.4, is_causal=True, chunk_size=7)
    assert cuda_kernel_calls == []
    ref, ref_lse, _ = _oracle(q, k, v, scale=0.4, is_causal=True)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=0, atol=1e-5)


def test_cuda_flash_path_not_taken_with_autograd(torch_generator, cuda_kernel_calls):
    q, k, v = _qkv(torch_generator, (1, 2, 2, 16, 16, 8, 8), torch.float16)
    q, k, v = (t.as_subclass(_CudaLike) for t in (q, k, v))
    k.requires_grad_(True)
    out, lse = exact_lse(q, k, v, scale=0.5)
    assert cuda_kernel_calls == []
    g = torch.autograd.grad(out.sum() + lse.sum(), k)[0]
    assert g.shape == k.shape and bool(torch.isfinite(g).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_flash_path_on_a_gpu(dtype, torch_generator):
    q, k, v = (t.cuda() for t in _qkv(torch_generator, (2, 4, 2, 64, 64, 64, 64), dtype))
    with torch.no_grad():
        out, lse = exact_lse(q, k, v, scale=0.2, is_causal=True)
    ref, ref_lse, pv = _oracle(q.cpu(), k.cpu(), v.cpu(), scale=0.2, is_causal=True)
    _assert_within_rounding(out.cpu(), lse.cpu(), ref, ref_lse, pv, dtype)


# -- the CPU flash path ------------------------------------------------------------------

FLASH_SHAPES = [  # (B, Hq, Hkv, N, M, D, Dv), causal
    ((2, 4, 2, 37, 37, 16, 16), True),
    ((2, 4, 2, 37, 37, 16, 16), False),
    ((2, 4, 1, 33, 70, 16, 8), True),   # MQA, more keys, Dv < D
    ((1, 6, 3, 50, 21, 8, 8), True),    # more queries than keys: 29 rows see no key
    ((1, 2, 2, 20, 28, 8, 12), False),  # Dv > D
]


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("shape,is_causal", FLASH_SHAPES)
def test_flash_lse_low_precision_within_rounding(dtype, shape, is_causal, torch_generator):
    q, k, v = _qkv(torch_generator, shape, dtype)
    out, lse = flash_lse(q, k, v, scale=0.3, is_causal=is_causal)
    assert out.dtype == dtype and lse.dtype == torch.float32
    ref, ref_lse, pv = _oracle(q, k, v, scale=0.3, is_causal=is_causal)
    _assert_within_rounding(out, lse, ref, ref_lse, pv, dtype)


@pytest.mark.parametrize("dtype", LOW + [torch.float64])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_exact_lse_dispatch_and_dtypes(dtype, requires_grad, torch_generator, monkeypatch):
    """CPU float32/bfloat16/float16 take the flash kernel with or without autograd, float64
    the chunked reference with the caller's chunk size; out in the accumulation dtype."""
    flash, chunked = [], []
    real_flash, real_chunked = exact_module._FlashCPU.apply, exact_module.exact_partial
    monkeypatch.setattr(exact_module._FlashCPU, "apply",
                        lambda *a: flash.append(1) or real_flash(*a))
    monkeypatch.setattr(exact_module, "exact_partial",
                        lambda *a, **kw: chunked.append(kw["chunk_size"]) or real_chunked(*a, **kw))
    q, k, v = _qkv(torch_generator, (1, 4, 2, 30, 30, 16, 16), dtype, requires_grad)
    out, lse = exact_lse(q, k, v, scale=0.3, chunk_size=7)  # non-causal by default
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.dtype == acc and lse.dtype == acc
    assert (flash, chunked) == (([], [7]) if dtype == torch.float64 else ([1], []))
    ref, ref_lse, pv = _oracle(q.detach(), k.detach(), v.detach(), scale=0.3)
    if dtype == torch.float64:
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lse, ref_lse, rtol=1e-12, atol=1e-12)
    else:  # out is the kernel's, cast up: the rounding of the input dtype
        _assert_within_rounding(out, lse, ref, ref_lse, pv, dtype)


def test_exact_forward_chunk_size_reaches_the_chunked_path(torch_generator, monkeypatch):
    seen = []
    real = exact_module.exact_partial
    monkeypatch.setattr(exact_module, "exact_partial",
                        lambda *a, **kw: seen.append(kw["chunk_size"]) or real(*a, **kw))
    q, k, v = _qkv(torch_generator, (1, 2, 2, 12, 12, 8, 8))
    out, lse = exact_forward(q, k, v, is_causal=True, scale=0.5, config=ExactConfig(chunk_size=3),
                             generator=None, need_lse=True)
    assert seen == [3]
    ref, ref_lse, _ = _oracle(q, k, v, scale=0.5, is_causal=True)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,is_causal,sdpa", [
    ((2, 6, 2, 20, 20, 8, 8), True, True),    # Hq != N != Hkv != M != D
    ((2, 6, 2, 20, 36, 8, 8), False, True),   # non-causal rectangles: SDPA
    ((2, 6, 2, 20, 36, 8, 8), True, False),   # causal rectangles: bottom-right, exact_lse
    ((2, 3, 3, 20, 36, 8, 8), False, True),   # no GQA
    ((1, 6, 2, 2, 2, 8, 8), False, True),     # N = M = Hkv != Hq: GQA all the same
    ((1, 6, 2, 5, 6, 8, 8), False, True),     # M = Hq != Hkv
])
def test_exact_forward_without_lse_takes_sdpa_with_scale_and_groups(shape, is_causal, sdpa,
                                                                    torch_generator,
                                                                    monkeypatch):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    q, k, v = _qkv(torch_generator, shape)
    out, lse = exact_forward(q, k, v, is_causal=is_causal, scale=0.9, config=ExactConfig(),
                             generator=None, need_lse=False)
    assert len(calls) == int(sdpa) and (lse is None) == sdpa
    ref, _, _ = _oracle(q, k, v, scale=0.9, is_causal=is_causal)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flash_lse_additive_mask_keeps_its_precision(dtype, torch_generator):
    """Log-weights near 100 (spacing 0.5 in bfloat16): the mask must reach the kernel in
    float32 (half-precision q) or q's dtype (float64 masks with float32 q)."""
    q, k, v = _qkv(torch_generator, (2, 2, 2, 9, 13, 8, 8), dtype)
    log_w = 100.0 + 4.0 * torch.rand(2, 2, 1, 13, dtype=torch.float64, generator=torch_generator)
    drop = torch.rand(2, 2, 9, 13, generator=torch_generator) < 0.3
    drop[1, 0, 3] = True  # a row with no key: out 0, lse -inf
    mask = log_w.masked_fill(drop, float("-inf"))
    mask_in = mask.float() if dtype == torch.bfloat16 else mask  # float64 mask, float32 q
    out, lse = flash_lse(q, k, v, scale=0.6, mask=mask_in)
    ref, ref_lse, pv = _oracle(q, k, v, scale=0.6, mask=mask.float())
    assert torch.isneginf(lse[1, 0, 3]) and bool((out[1, 0, 3] == 0).all())
    _assert_within_rounding(out, lse, ref, ref_lse, pv, dtype)


def test_flash_lse_float32_gradients_of_out_and_lse(torch_generator):
    """Gradients through the kernel's backward (dlse folded into Δ) in float32, against the
    float64 oracle's: relative error 1e-4 (measured below 3e-6), a detached or zero gradient
    is off by 1."""
    q, k, v = _qkv(torch_generator, (1, 4, 2, 24, 31, 8, 12), torch.float32, True)
    out, lse = flash_lse(q, k, v, scale=0.35, is_causal=True)
    w1 = torch.randn(out.shape, generator=torch_generator)
    w2 = torch.randn(lse.shape, generator=torch_generator)
    g = torch.autograd.grad((out * w1).sum() + (lse * w2).sum(), (q, k, v))
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref, ref_lse, _ = _oracle(q64, k64, v64, scale=0.35, is_causal=True)
    g_ref = torch.autograd.grad((ref * w1.double()).sum() + (ref_lse * w2.double()).sum(),
                                (q64, k64, v64))
    for a, b in zip(g, g_ref):
        assert a.dtype == torch.float32
        assert float((a.double() - b).norm() / b.norm()) < 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flash_lse_half_precision_gradients_of_out_and_lse(dtype, torch_generator):
    """bfloat16/float16 gradients through the kernel's backward with dlse folded in (the
    folded column must be cast to the kernel's dtype), against the float64 oracle's on the
    same rounded inputs: relative error below 4u (measured at most 1.2u over 200 seeds:
    4.5e-3 bfloat16, 5.5e-4 float16); a zero or detached gradient is off by 1."""
    q, k, v = _qkv(torch_generator, (1, 4, 2, 24, 31, 8, 8), dtype, True)
    out, lse = flash_lse(q, k, v, scale=0.35, is_causal=True)
    w1 = torch.randn(out.shape, generator=torch_generator)
    w2 = torch.randn(lse.shape, generator=torch_generator)
    g = torch.autograd.grad((out.float() * w1).sum() + (lse * w2).sum(), (q, k, v))
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref, ref_lse, _ = _oracle(q64, k64, v64, scale=0.35, is_causal=True)
    g_ref = torch.autograd.grad((ref * w1.double()).sum() + (ref_lse * w2.double()).sum(),
                                (q64, k64, v64))
    for a, b in zip(g, g_ref):
        assert a.dtype == dtype
        assert float((a.double() - b).norm() / b.norm()) < 4 * UNIT_ROUNDOFF[dtype]


def test_flash_lse_rejects_a_mask_with_a_causal_rectangle(torch_generator):
    q, k, v = _qkv(torch_generator, (1, 1, 1, 4, 6, 8, 8), torch.float32)
    with pytest.raises(ValueError, match="is_causal or a mask"):
        flash_lse(q, k, v, scale=0.5, is_causal=True, mask=torch.zeros(1, 1, 4, 6))


# -- the chunked reference and partial_attention -----------------------------------------


def test_exact_partial_defaults_to_non_causal_and_keyless_rows(torch_generator):
    q, k, v = _qkv(torch_generator, (1, 2, 1, 6, 9, 4, 5))
    out, lse = exact_partial(q, k, v, scale=0.5)
    ref, ref_lse, _ = _oracle(q, k, v, scale=0.5)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-12, atol=1e-12)
    # No key at all: every row is empty, in the accumulation dtype.
    out0, lse0 = exact_partial(q, k[:, :, :0], v[:, :, :0], scale=0.5, is_causal=True)
    assert out0.shape == (1, 2, 6, 5) and out0.dtype == torch.float64
    assert lse0.dtype == torch.float64 and bool(torch.isneginf(lse0).all())
    assert bool((out0 == 0).all())


@pytest.mark.parametrize("lead", [(3,), (2, 3, 2)])
def test_partial_attention_any_leading_dims(lead, torch_generator):
    """[..., n, D] with 1 or 3 leading dims against a loop over them."""
    q = torch.randn(*lead, 5, 4, dtype=torch.float64, generator=torch_generator)
    k = torch.randn(*lead, 7, 4, dtype=torch.float64, generator=torch_generator)
    v = torch.randn(*lead, 7, 3, dtype=torch.float64, generator=torch_generator)
    out, lse = partial_attention(q, k, v, scale=0.7)
    for i in range(q.reshape(-1, 5, 4).shape[0]):
        qi, ki, vi = q.reshape(-1, 5, 4)[i], k.reshape(-1, 7, 4)[i], v.reshape(-1, 7, 3)[i]
        s = qi @ ki.T * 0.7
        torch.testing.assert_close(out.reshape(-1, 5, 3)[i], torch.softmax(s, -1) @ vi)
        torch.testing.assert_close(lse.reshape(-1, 5)[i], torch.logsumexp(s, -1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_partial_attention_accumulates_in_float32(dtype, torch_generator):
    """Half-precision or float32 q with float64 log-weights: out and lse in float32,
    computed from the inputs at float32 (no bfloat16 rounding of the logits)."""
    q, k, v = _qkv(torch_generator, (1, 2, 2, 6, 9, 8, 8), dtype)
    log_w = torch.randn(9, dtype=torch.float64, generator=torch_generator)
    out, lse = partial_attention(q, k, v, scale=0.5, key_log_weights=log_w)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    ref, ref_lse, pv = _oracle(q, k, v, scale=0.5, mask=log_w.expand(6, 9))
    assert bool(((out.double() - ref).abs() <= 64 * 2.0**-24 * pv).all())
    assert bool(((lse.double() - ref_lse).abs() <= 64 * 2.0**-24 * (1 + ref_lse.abs())).all())


def test_exact_config_chunk_size_bounds():
    assert ExactConfig(chunk_size=1).chunk_size == 1
    with pytest.raises(ValueError, match="chunk_size"):
        ExactConfig(chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size"):
        ExactConfig(chunk_size=2.0)


def test_chunk_size_one_through_the_api(torch_generator):
    q, k, v = _qkv(torch_generator, (1, 2, 1, 5, 7, 4, 4))
    out, lse = ks.attention(q, k, v, is_causal=True, return_lse=True,
                            config=ExactConfig(chunk_size=1))
    ref, ref_lse, _ = _oracle(q, k, v, scale=0.5, is_causal=True)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-12, atol=1e-12)


# -- gather_rows -------------------------------------------------------------------------


def test_gather_rows_against_an_index_loop(torch_generator):
    B, H, R, D, S = 2, 3, 7, 5, 11  # every size distinct; repeated indices
    x = torch.randn(B, H, R, D, dtype=torch.float64, generator=torch_generator,
                    requires_grad=True)
    idx = torch.randint(0, R, (B, H, S), generator=torch_generator)
    rows = gather_rows(x, idx)
    assert rows.shape == (B, H, S, D)
    expected = torch.stack([torch.stack([torch.stack([x[b, h, int(idx[b, h, s])]
                                                      for s in range(S)])
                                         for h in range(H)]) for b in range(B)])
    assert torch.equal(rows, expected)
    w = torch.randn(B, H, S, D, dtype=torch.float64, generator=torch_generator)
    (grad,) = torch.autograd.grad((rows * w).sum(), x)
    expected_grad = torch.zeros_like(x)
    for b in range(B):
        for h in range(H):
            for s in range(S):
                expected_grad[b, h, int(idx[b, h, s])] += w[b, h, s]
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)


# -- the warnings ------------------------------------------------------------------------


@pytest.mark.parametrize("warn,category,text", [
    (exact_module.warn_exact_fallback, exact_module.ExactFallbackWarning,
     "method='kde' computed exact attention, not its sketch: the input is short"),
    (exact_module.warn_no_speedup, exact_module.NoSpeedupWarning,
     ("method='kde' runs its sketch the input is short, where it was measured slower than "
      "exact attention (BENCHMARKS.md); method='exact' is faster there")),
])
def test_warnings_name_the_method_and_point_at_the_caller(warn, category, text):
    with pytest.warns(category) as record:
        warn("kde", "the input is short")
    assert len(record) == 1 and str(record[0].message) == text
    # stacklevel=2: the line that called it (under tools/mutation.py, mutmut's trampoline
    # is one frame between this test and the function, and takes that place).
    assert record[0].filename != exact_module.__file__
    assert record[0].filename == __file__ or "mutmut" in record[0].filename


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("N,M", [(0, 5), (4, 0), (0, 0)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_flash_lse_empty_queries_or_keys(dtype, N, M, is_causal, torch_generator):
    """No query or no key: out 0 and lse -inf, as the float64 path (the CPU kernel divides
    by these counts and kills the process with SIGFPE)."""
    q = torch.randn(1, 4, N, 8, generator=torch_generator).to(dtype)
    k = torch.randn(1, 2, M, 8, generator=torch_generator).to(dtype)
    v = torch.randn(1, 2, M, 6, generator=torch_generator).to(dtype)
    out, lse = flash_lse(q, k, v, scale=0.3, is_causal=is_causal)
    assert out.shape == (1, 4, N, 6) and out.dtype == dtype and bool((out == 0).all())
    assert lse.shape == (1, 4, N) and lse.dtype == torch.float32 and bool(torch.isneginf(lse).all())
    ref, ref_lse = exact_lse(q.double(), k.double(), v.double(), scale=0.3, is_causal=is_causal)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=0)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_empty_query_or_key_sets_keep_the_documented_dtypes(dtype, torch_generator):
    """The empty-set branches return lse in the accumulation dtype (float64 for float64 q,
    else float32), flash_lse's out in q's dtype and exact_partial's out in the accumulation
    dtype, as their non-empty paths do (issue 22: `acc = None`, `dtype=None` or a dropped
    `dtype=` in these branches survived the attn.exact run at 120bc62)."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    q = torch.randn(1, 4, 3, 8, generator=torch_generator).to(dtype)
    k = torch.randn(1, 2, 5, 8, generator=torch_generator).to(dtype)
    v = torch.randn(1, 2, 5, 6, generator=torch_generator).to(dtype)
    for qq, kk, vv in ((q[:, :, :0], k, v), (q, k[:, :, :0], v[:, :, :0])):
        out, lse = flash_lse(qq, kk, vv, scale=0.3)
        assert out.dtype == dtype and lse.dtype == acc
        assert bool((out == 0).all()) and bool(torch.isneginf(lse).all())
    out, lse = exact_partial(q[:, :, :0], k, v, scale=0.3)
    assert out.shape == (1, 4, 0, 6) and out.dtype == acc
    assert lse.shape == (1, 4, 0) and lse.dtype == acc


def _views(x):
    """Non-contiguous views of x [B, H, R, D] (B = 2, R = 40) whose rows gather_rows reads
    in place: the causal recursion's second halves, its half blocks (batch = blocks,
    B = 1), every other head, one row of one batch."""
    H, R, D = x.shape[1:]
    blocks = x[:1].reshape(1, H, 2, 2, R // 4, D)[:, :, :, 1].transpose(1, 2).reshape(2, H, -1, D)
    return {"halves": x[:, :, R // 2:], "blocks": blocks, "heads": x[:, ::2], "row": x[1:, :, 3:4]}


@pytest.mark.parametrize("view", ["halves", "blocks", "heads", "row"])
@pytest.mark.parametrize("kv_heads", [None, 1, 3])
def test_gather_rows_reads_views_and_their_fold(view, kv_heads, torch_generator):
    from kernelsketch.attn.common.gqa import fold_groups

    x = torch.randn(2, 6, 40, 5, dtype=torch.float64, generator=torch_generator,
                    requires_grad=True)
    xv = _views(x)[view]
    assert not xv.is_contiguous()
    H = xv.shape[1] if kv_heads is None else kv_heads
    ref = xv.contiguous() if kv_heads is None else fold_groups(xv.contiguous(), kv_heads)
    idx = torch.randint(0, ref.shape[2], (xv.shape[0], H, 23), generator=torch_generator)
    got = gather_rows(xv, idx, kv_heads)
    want = gather_rows(ref, idx)
    assert torch.equal(got, want)
    w = torch.randn(got.shape, dtype=torch.float64, generator=torch_generator)
    (grad,) = torch.autograd.grad((got * w).sum(), x)
    (want_grad,) = torch.autograd.grad((want * w).sum(), x)
    assert torch.equal(grad, want_grad) and grad.abs().sum() > 0


@pytest.mark.parametrize("view", ["halves", "blocks", "heads", "row"])
def test_batched_matmul_equals_matmul_on_views(view, torch_generator):
    from kernelsketch.attn.common.gqa import batched_matmul

    x = torch.randn(2, 6, 40, 5, dtype=torch.float64, generator=torch_generator,
                    requires_grad=True)
    xv = _views(x)[view]
    small = torch.randn(*xv.shape[:2], 3, 5, dtype=torch.float64, generator=torch_generator)
    w = torch.randn(5, 4, dtype=torch.float64, generator=torch_generator)
    for a, b in ((xv, w), (small, xv.transpose(-1, -2)), (xv, small.transpose(-1, -2))):
        got, want = batched_matmul(a, b), a @ b
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn(*xv.shape[:3], dtype=torch.float64, generator=torch_generator)
    g = g[:, :, None].expand(-1, -1, 3, -1)
    (grad,) = torch.autograd.grad((batched_matmul(small, xv.transpose(-1, -2)) * g).sum(), x)
    (want_grad,) = torch.autograd.grad(((small @ xv.transpose(-1, -2)) * g).sum(), x)
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-12)
