"""Triton kernels of causal PolySketch attention against an independent float64 reference.

The kernels run compiled on a CUDA machine and interpreted on CPU (the
``triton_device`` fixture, tests/attn/conftest.py), in float32, float16 and
bfloat16 on both. The reference materialises the causal [N, N] weights:
exact (q'·k')^p inside a block, the sketched (φ(q')·φ(k'))² between blocks.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from kernelsketch.attn.polysketch import PolySketchAttention, PolySketchConfig, PolySketchFeatures
from kernelsketch.attn.polysketch import method as dispatch

pytest.importorskip("triton")


def quadratic_reference(q, k, v, fq, fk, *, degree, block_size):
    """out = num / (1 + den) and den in float64, from the [N, N] causal weights."""
    q, k, v, fq, fk = (t.double() for t in (q, k, v, fq, fk))
    G = q.shape[1] // k.shape[1]
    k, v, fk = (t.repeat_interleave(G, dim=1) for t in (k, v, fk))
    N = q.shape[2]
    pos = torch.arange(N, device=q.device)
    same_block = (pos[:, None] // block_size) == (pos[None, :] // block_size)
    exact = (q @ k.transpose(-1, -2)) ** degree
    sketched = (fq @ fk.transpose(-1, -2)) ** 2
    w = torch.where(same_block, exact, sketched).masked_fill(pos[None, :] > pos[:, None], 0.0)
    den = w.sum(-1)
    return (w @ v) / (1 + den).unsqueeze(-1), den


def inputs(B, Hq, Hkv, N, D, Dv, r, *, dtype, device, seed):
    """Scaled, layer-normalised q', k' (as the method hands them over), v, and φ(q'), φ(k')."""
    gen = torch.Generator().manual_seed(seed)
    q = F.layer_norm(torch.randn(B, Hq, N, D, generator=gen, dtype=torch.float64), (D,))
    k = F.layer_norm(torch.randn(B, Hkv, N, D, generator=gen, dtype=torch.float64), (D,))
    q, k = q * D ** -0.25, k * D ** -0.25
    v = torch.randn(B, Hkv, N, Dv, generator=gen, dtype=torch.float64)
    feats = PolySketchFeatures(D, PolySketchConfig(sketch_size=r), generator=gen).double()
    fq, fk = feats(q), feats(k)
    tensors = [t.to(dtype) for t in (q, k, v)] + [t.float() for t in (fq, fk)]
    return [t.to(device).requires_grad_(True) for t in tensors]


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


# Relative Frobenius errors against the float64 reference (output and den / gradients),
# measured in the interpreter over the CASES with 4 seeds each: largest float32 4e-7 / 4e-7,
# float16 1.3e-4 / 4.1e-4. Thresholds: 25x (float32) and 12x (float16) that; bfloat16 has 3
# fewer mantissa bits (8x the rounding) and TF32 (float32 on CUDA) as many as float16, each
# with the same ~10x margin. Deterministic inputs: a failure is a kernel change, not chance.
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 5e-3), torch.bfloat16: (1.5e-2, 3e-2)}
TOL_CUDA_FP32 = (2e-3, 5e-3)
CASES = [  # (B, Hq, Hkv, N, D, Dv, r, block_size, degree)
    (1, 2, 1, 150, 16, 16, 16, 64, 4),  # GQA, N not a multiple of the block, 2 rows a per step
    (1, 1, 1, 140, 24, 40, 32, 128, 6),  # two tiles per block, D and Dv masked, degree 6
]
# r = 64: two steps per row a of the feature grid in state_grad_kernel (dtype-independent
# code; float32 only: 40 s in the interpreter).
WIDE_SKETCH = (1, 1, 1, 70, 16, 16, 64, 64, 2)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NO_BF16_INTERPRETER = ("Triton's interpreter has no bfloat16 arithmetic (it multiplies the "
                       "uint16 bit patterns: triton-lang/triton#11584); bfloat16 runs compiled "
                       "on CUDA and is compiled for sm_90 / sm_80 in tests/attn/test_aot.py")


@pytest.mark.parametrize("case,dtype", [(c, d) for c in CASES for d in DTYPES]
                         + [(WIDE_SKETCH, torch.float32)], ids=str)
def test_forward_and_gradients_match_the_quadratic_reference(triton_device, case, dtype):
    from kernelsketch.attn.polysketch.fused import polysketch_causal

    if dtype == torch.bfloat16 and triton_device == "cpu":
        pytest.skip(NO_BF16_INTERPRETER)
    B, Hq, Hkv, N, D, Dv, r, b, p = case
    q, k, v, fq, fk = inputs(B, Hq, Hkv, N, D, Dv, r, dtype=dtype, device=triton_device,
                             seed=N + r)
    out, den = polysketch_causal(q, k, v, fq, fk, degree=p, block_size=b)
    ref, ref_den = quadratic_reference(q, k, v, fq, fk, degree=p, block_size=b)
    tol_out, tol_grad = TOL[dtype]
    if dtype == torch.float32 and triton_device == "cuda":
        tol_out, tol_grad = TOL_CUDA_FP32
    assert out.dtype == den.dtype == torch.float32
    assert rel(out, ref) < tol_out and rel(den, ref_den) < tol_out
    gen = torch.Generator().manual_seed(1)
    w_out = torch.randn(ref.shape, generator=gen, dtype=torch.float64).to(ref.device)
    w_den = torch.randn(ref_den.shape, generator=gen, dtype=torch.float64).to(ref.device)
    grads = torch.autograd.grad((out.double() * w_out).sum() + (den.double() * w_den).sum(),
                                (q, k, v, fq, fk))
    ref_grads = torch.autograd.grad((ref * w_out).sum() + (ref_den * w_den).sum(),
                                    (q, k, v, fq, fk))
    for name, g, gr, x in zip(("q", "k", "v", "fq", "fk"), grads, ref_grads, (q, k, v, fq, fk)):
        assert g.dtype == x.dtype, name
        assert rel(g, gr) < tol_grad, name


def test_future_keys_do_not_change_the_outputs(triton_device):
    from kernelsketch.attn.polysketch.fused import polysketch_causal

    q, k, v, fq, fk = (t.detach() for t in inputs(1, 1, 1, 150, 16, 16, 16, dtype=torch.float32,
                                                  device=triton_device, seed=0))
    out = polysketch_causal(q, k, v, fq, fk, degree=4, block_size=64)[0]
    t = 90  # inside the second block
    gen = torch.Generator().manual_seed(2)
    k2, v2, fk2 = k.clone(), v.clone(), fk.clone()
    for x in (k2, v2, fk2):
        x[:, :, t + 1:] = (torch.randn(x[:, :, t + 1:].shape, generator=gen) * math.pi).to(x)
    out2 = polysketch_causal(q, k2, v2, fq, fk2, degree=4, block_size=64)[0]
    torch.testing.assert_close(out[:, :, : t + 1], out2[:, :, : t + 1], rtol=0, atol=0)
    assert not torch.equal(out[:, :, t + 1:], out2[:, :, t + 1:])


BAD_INPUTS = {  # one broken argument each, from a valid call (N = 64, D = Dv = r = 16, block 64)
    "k of another length": ({"k": (1, 1, 65, 16)}, ValueError, "N == M"),
    "D above 128": ({"q": (1, 1, 64, 160), "k": (1, 1, 64, 160)}, ValueError, "D must be in"),
    "r not a power of two": ({"fq": (1, 1, 64, 24), "fk": (1, 1, 64, 24)}, ValueError, "power of two"),
    "odd degree": ({"degree": 3}, ValueError, "even int"),
    "block not a multiple of 64": ({"block_size": 48}, ValueError, "multiple of 64"),
    "mixed dtypes": ({"v": ((1, 1, 64, 16), torch.float16)}, TypeError, "share one dtype"),
    "float64": ({"q": ((1, 1, 64, 16), torch.float64), "k": ((1, 1, 64, 16), torch.float64),
                 "v": ((1, 1, 64, 16), torch.float64)}, TypeError, "share one dtype"),
    "heads not a multiple": ({"q": (1, 3, 64, 16), "fq": (1, 3, 64, 16), "k": (1, 2, 64, 16),
                              "v": (1, 2, 64, 16), "fk": (1, 2, 64, 16)}, ValueError, "multiple"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_the_public_entry_point_validates_its_inputs(case):
    from kernelsketch.attn.polysketch.fused import polysketch_causal

    changes, error, match = BAD_INPUTS[case]
    shape = (1, 1, 64, 16)
    args = {name: torch.zeros(shape) for name in ("q", "k", "v", "fq", "fk")}
    kwargs = {"degree": 4, "block_size": 64}
    for name, value in changes.items():
        if name in kwargs:
            kwargs[name] = value
        elif isinstance(value[0], tuple):
            args[name] = torch.zeros(value[0], dtype=value[1])
        else:
            args[name] = torch.zeros(value)
    with pytest.raises(error, match=match):
        polysketch_causal(*args.values(), **kwargs)


def test_supported_needs_cuda_and_eligible_inputs():
    q = torch.zeros(1, 1, 8, 16)
    v = torch.zeros(1, 1, 8, 16, dtype=torch.bfloat16)
    assert dispatch.fused_eligible(q, q, v, q, block_size=64, exact_local=True)
    assert not dispatch.fused_supported(q, q, v, q, block_size=64, exact_local=True)  # CPU


INELIGIBLE = {  # one broken condition each, from the eligible case (bf16 v, N = M = 8, D = Dv = r = 16)
    "float64": {"q": torch.zeros(1, 1, 8, 16, dtype=torch.float64)},
    "sketched local blocks": {"exact_local": False},
    "N != M": {"k": torch.zeros(1, 1, 9, 16)},
    "D above 128": {"q": torch.zeros(1, 1, 8, 256), "k": torch.zeros(1, 1, 8, 256)},
    "Dv above 128": {"v": torch.zeros(1, 1, 8, 256, dtype=torch.bfloat16)},
    "r below 16": {"fq": torch.zeros(1, 1, 8, 8)},
    "r not a power of two": {"fq": torch.zeros(1, 1, 8, 48)},
    "block not a multiple of 64": {"block_size": 96},
}


@pytest.mark.parametrize("case", list(INELIGIBLE))
def test_inputs_the_kernels_do_not_take_stay_on_the_torch_path(case):
    x = torch.zeros(1, 1, 8, 16)
    args = {"q": x, "k": x, "v": x.bfloat16(), "fq": x, "block_size": 64,
            "exact_local": True} | INELIGIBLE[case]
    assert not dispatch.fused_eligible(**args)


def test_float32_takes_the_kernels_only_where_torch_allows_tf32(monkeypatch):
    # The kernels multiply float32 in TF32 (common/triton_utils.py): under torch's default
    # ("highest") float32 stays on the exact torch path.
    x = torch.zeros(1, 1, 8, 16)
    args = {"block_size": 64, "exact_local": True}
    monkeypatch.setattr(dispatch, "tf32_allowed", lambda: False)
    assert not dispatch.fused_eligible(x, x, x, x, **args)
    monkeypatch.setattr(dispatch, "tf32_allowed", lambda: True)
    assert dispatch.fused_eligible(x, x, x, x, **args)


def test_layer_through_the_triton_dispatch_matches_the_torch_path(triton_device, monkeypatch):
    # PolySketchAttention's causal forward with the kernels forced on (interpreted on CPU)
    # against the same layer on the torch path in float64: output and the gradients of q,
    # k, v and of the affine q/k layer norms.
    layer = PolySketchAttention(16, PolySketchConfig(sketch_size=16, block_size=64), seed=3)
    layer = layer.to(triton_device)
    with torch.no_grad():
        for norm in (layer.q_norm, layer.k_norm):
            norm.weight.uniform_(0.5, 1.5, generator=torch.Generator(triton_device).manual_seed(4))
            norm.bias.normal_(0, 0.1, generator=torch.Generator(triton_device).manual_seed(5))
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, h, 100, 16, generator=gen).to(triton_device).requires_grad_(True)
               for h in (2, 1, 1))
    params = [layer.q_norm.weight, layer.k_norm.bias]
    w = torch.randn(1, 2, 100, 16, generator=gen).to(triton_device)
    calls = []
    monkeypatch.setattr(dispatch, "fused_supported", lambda *a, **kw: calls.append(1) or True)
    out = layer(q, k, v)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v, *params))
    assert calls and out.dtype == torch.float32
    monkeypatch.setattr(dispatch, "fused_supported", lambda *a, **kw: False)
    layer.double()  # in place: `params` are the same Parameter objects, now float64
    ref = layer(q.double(), k.double(), v.double())
    ref_grads = torch.autograd.grad((ref * w.double()).sum(), (q, k, v, *params))
    tol_out, tol_grad = TOL_CUDA_FP32 if triton_device == "cuda" else TOL[torch.float32]
    assert rel(out, ref) < tol_out
    for name, g, gr in zip(("q", "k", "v", "q_norm.weight", "k_norm.bias"), grads, ref_grads):
        assert rel(g, gr) < tol_grad, name
