"""Triton kernels of PolySketch attention vs the PyTorch path, on CPU through TRITON_INTERPRET=1."""

import importlib
import math
import os

import pytest
import torch
import torch.nn.functional as F

os.environ["TRITON_INTERPRET"] = "1"  # before the kernels module is (re)loaded below
pytest.importorskip("triton")

from kernelsketch.attn.polysketch import (
    PolySketchAttention,
    PolySketchConfig,
    PolySketchFeatures,
)
from kernelsketch.attn.polysketch import method as dispatch
from kernelsketch.attn.polysketch.naive import _causal_torch


@pytest.fixture(scope="module")
def kernels():
    import kernelsketch.attn.polysketch.kernels as module
    from kernelsketch.attn.polysketch import fused

    # Reload so the kernels are decorated under the interpreter even if the module was
    # imported earlier in this process without TRITON_INTERPRET; then the autograd glue,
    # which holds references to them.
    importlib.reload(module)
    return importlib.reload(fused)


def inputs(B, Hq, Hkv, N, D, Dv, r, seed):
    gen = torch.Generator().manual_seed(seed)
    q = F.layer_norm(torch.randn(B, Hq, N, D, generator=gen), (D,)) * D ** -0.25
    k = F.layer_norm(torch.randn(B, Hkv, N, D, generator=gen), (D,)) * D ** -0.25
    v = torch.randn(B, Hkv, N, Dv, generator=gen)
    feats = PolySketchFeatures(D, PolySketchConfig(sketch_size=r), generator=gen).double()
    fq, fk = feats(q.double()).float(), feats(k.double()).float()
    return [t.clone().requires_grad_(True) for t in (q, k, v, fq, fk)]


def reference(q, k, v, fq, fk, *, degree, block_size):
    """PyTorch block algorithm in float64: out = num / (1 + den), and den."""
    B, Hq, N, D = q.shape
    G = Hq // k.shape[1]
    num, den = _causal_torch(q.double().reshape(B, -1, G, N, D), k.double(), v.double(),
                             fq.double().reshape(B, -1, G, N, fq.shape[-1]), fk.double(),
                             degree=degree, block_size=block_size, exact_local=True)
    num, den = num.reshape(B, Hq, N, -1), den.reshape(B, Hq, N)
    return num / (1 + den).unsqueeze(-1), den


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


CASES = [  # (B, Hq, Hkv, N, D, Dv, r, block_size, tile, degree)
    (1, 2, 1, 40, 16, 16, 16, 16, 16, 4),  # GQA, N not a multiple of the block
    (1, 1, 1, 37, 16, 32, 16, 32, 16, 6),  # two tiles per block, degree 6, Dv != D
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_triton_forward_and_gradients_match_torch_path(kernels, case):
    B, Hq, Hkv, N, D, Dv, r, b, tile, p = case
    q, k, v, fq, fk = inputs(B, Hq, Hkv, N, D, Dv, r, seed=N)
    out, den = kernels.polysketch_causal(q, k, v, fq, fk, degree=p, block_size=b, tile=tile)
    ref, ref_den = reference(q, k, v, fq, fk, degree=p, block_size=b)
    assert rel(out, ref) < 1e-5 and rel(den, ref_den) < 1e-5
    w_out, w_den = torch.randn_like(ref), torch.randn_like(ref_den)
    grads = torch.autograd.grad((out * w_out).sum() + (den * w_den).sum(), (q, k, v, fq, fk))
    ref_grads = torch.autograd.grad((ref * w_out).sum() + (ref_den * w_den).sum(),
                                    (q, k, v, fq, fk))
    for name, g, gr in zip(("q", "k", "v", "fq", "fk"), grads, ref_grads):
        assert g.dtype == torch.float32
        assert rel(g, gr) < 1e-4, name


def test_supported_needs_cuda_and_kernel_friendly_shapes(kernels):
    q = torch.zeros(1, 1, 8, 16)
    assert dispatch.fused_eligible(q, q, q, q, block_size=16, exact_local=True)
    assert not dispatch.fused_supported(q, q, q, q, block_size=16, exact_local=True)  # CPU tensors


INELIGIBLE = {  # one broken condition each, from the eligible case (N = M = 8, D = Dv = r = 16)
    "float64": {"q": torch.zeros(1, 1, 8, 16, dtype=torch.float64)},
    "sketched local blocks": {"exact_local": False},
    "N != M": {"k": torch.zeros(1, 1, 9, 16)},
    "D not a power of two": {"q": torch.zeros(1, 1, 8, 24), "k": torch.zeros(1, 1, 8, 24)},
    "Dv above 256": {"v": torch.zeros(1, 1, 8, 512)},
    "r below 16": {"fq": torch.zeros(1, 1, 8, 8)},
    "block not a power of two": {"block_size": 24},
}


@pytest.mark.parametrize("case", list(INELIGIBLE))
def test_inputs_the_kernels_do_not_handle_stay_on_the_torch_path(kernels, case):
    x = torch.zeros(1, 1, 8, 16)
    args = {"q": x, "k": x, "v": x, "fq": x, "block_size": 16, "exact_local": True} | INELIGIBLE[case]
    assert not dispatch.fused_eligible(**args)


def test_layer_through_the_triton_dispatch_matches_the_torch_path(kernels, monkeypatch):
    # PolySketchAttention's causal forward with the kernels forced on (CPU tensors under the
    # interpreter) against the same layer on the PyTorch path in float64: output and the
    # gradients of q, k, v and of the affine q/k layer norms.
    layer = PolySketchAttention(16, PolySketchConfig(sketch_size=16, block_size=16), seed=3)
    with torch.no_grad():
        for norm in (layer.q_norm, layer.k_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0, 0.1)
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, h, 24, 16, generator=gen, requires_grad=True) for h in (2, 1, 1))
    params = [layer.q_norm.weight, layer.k_norm.bias]
    w = torch.randn(1, 2, 24, 16, generator=gen)
    calls = []
    monkeypatch.setattr(dispatch, "fused_supported", lambda *a, **kw: calls.append(1) or True)
    out = layer(q, k, v)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v, *params))
    assert calls and out.dtype == torch.float32
    monkeypatch.setattr(dispatch, "fused_supported", lambda *a, **kw: False)
    layer.double()  # in place: `params` are the same Parameter objects, now float64
    ref = layer(q.double(), k.double(), v.double())
    ref_grads = torch.autograd.grad((ref * w.double()).sum(), (q, k, v, *params))
    assert rel(out, ref) < 1e-5
    for name, g, gr in zip(("q", "k", "v", "q_norm.weight", "k_norm.bias"), grads, ref_grads):
        assert rel(g, gr) < 1e-4, name


def test_tile_that_does_not_divide_the_block_is_rejected(kernels):
    q, k, v, fq, fk = inputs(1, 1, 1, 8, 16, 16, 16, seed=0)
    with pytest.raises(ValueError, match="tile must be a power of two >= 16 dividing"):
        kernels.polysketch_causal(q, k, v, fq, fk, degree=4, block_size=16, tile=32)


def test_future_keys_do_not_change_triton_outputs(kernels):
    q, k, v, fq, fk = (t.detach() for t in inputs(1, 1, 1, 20, 16, 16, 16, seed=0))
    out = kernels.polysketch_causal(q, k, v, fq, fk, degree=4, block_size=16)[0]
    t = 9
    k2, v2, fk2 = k.clone(), v.clone(), fk.clone()
    for x in (k2, v2, fk2):
        x[:, :, t + 1:] = torch.randn_like(x[:, :, t + 1:]) * math.pi
    out2 = kernels.polysketch_causal(q, k2, v2, fq, fk2, degree=4, block_size=16)[0]
    torch.testing.assert_close(out[:, :, : t + 1], out2[:, :, : t + 1], rtol=0, atol=0)
