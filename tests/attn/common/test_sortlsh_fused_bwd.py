"""Gradients of the fused HyperAttention Triton path vs the torch path (TRITON_INTERPRET=1 on CPU).

Both paths draw the same hash and samples from the same generator seed, so
they compute the same function of (q, k, v); the loss (out·W).sum() +
(lse·w).sum() with random W, w checks the gradients of out and of lse.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

import kernelsketch
from kernelsketch.attn.hyper import HyperConfig, hyper_noncausal
from kernelsketch.attn.hyper import fused as hyper_fused
from kernelsketch.attn.hyper import method as hyper_method
from kernelsketch.attn.hyper import naive as hyper_naive
from kernelsketch.attn.hyper.fused import hyper_noncausal_fused
from kernelsketch.attn.kde import KDEConfig, kde_noncausal
from kernelsketch.attn.kde import fused as kde_fused
from kernelsketch.attn.kde import method as kde_method
from kernelsketch.attn.kde.fused import kde_noncausal_fused

from ..reference import naive_attention, random_qkv

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32] + ([torch.bfloat16, torch.float16] if DEVICE == "cuda" else [])


def gen(seed):
    return torch.Generator(device=DEVICE).manual_seed(seed)


def tolerance(dtype):
    """Relative Frobenius error allowed between the two paths' gradients."""
    if DEVICE == "cpu":
        return 1e-4  # interpreter: float32 products on both sides
    return 1e-2 if dtype == torch.float32 else 3e-2  # TF32 forward / half-precision products


def loss_weights(q, v):
    B, Hq, N, Dv = *q.shape[:3], v.shape[-1]
    return (torch.randn(B, Hq, N, Dv, device=q.device, dtype=torch.float64),
            torch.randn(B, Hq, N, device=q.device, dtype=torch.float64))


def grads(out, lse, weights, inputs):
    W, w = weights
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    loss = (out.double() * W).sum() + (lse.double() * w).sum()
    return torch.autograd.grad(loss, inputs)


def assert_grads_close(got, ref, tol):
    for name, g, r in zip("qkv", got, ref):
        assert torch.isfinite(g).all(), f"d{name} has non-finite entries"
        diff = g.double() - r.double()
        err = torch.linalg.vector_norm(diff) / torch.linalg.vector_norm(r.double())
        assert err < tol, f"d{name}: relative error {err:.2e} >= {tol:.0e}"


def with_constant_weights(monkeypatch):
    """Torch reference whose sampling weights are constants (no gradient through ‖v_j‖)."""
    draw = hyper_naive.draw_samples
    monkeypatch.setattr(hyper_naive, "draw_samples",
                        lambda k, v, config, generator: draw(k, v.detach(), config, generator))


@pytest.mark.parametrize("shape,sampling", [
    ((1, 2, 2, 70, 70, 16, 16), "uniform"),
    ((2, 4, 2, 50, 90, 16, 32), "uniform"),
    ((2, 4, 2, 50, 90, 16, 32), "value_norm"),
    ((1, 3, 1, 33, 130, 32, 16), "value_norm"),
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_gradients_match_torch_path(shape, sampling, dtype, monkeypatch):
    B, Hq, Hkv, N, M, D, Dv = shape
    q, k, v = random_qkv(B, Hq, Hkv, N, M, D, Dv, dtype=dtype, device=DEVICE, requires_grad=True)
    cfg = HyperConfig(block_size=16, sample_size=24, min_seq_len=0, lsh_bits=4, sampling=sampling)
    weights = loss_weights(q, v)
    got = grads(*hyper_noncausal_fused(q, k, v, D ** -0.5, cfg, gen(3)), weights, (q, k, v))
    with_constant_weights(monkeypatch)
    ref = grads(*hyper_noncausal(q, k, v, D ** -0.5, cfg, gen(3)), weights, (q, k, v))
    assert_grads_close(got, ref, tolerance(dtype))


def test_fused_gradients_are_exact_when_samples_cover_every_key():
    # sample_size >= M: every key is a sample of weight 1, masked where the block covers it.
    q, k, v = random_qkv(1, 4, 2, 40, 75, 16, dtype=torch.float32, device=DEVICE,
                         requires_grad=True)
    cfg = HyperConfig(block_size=16, sample_size=100, min_seq_len=0, lsh_bits=3)
    weights = loss_weights(q, v)
    got = grads(*hyper_noncausal_fused(q, k, v, 0.3, cfg, gen(1)), weights, (q, k, v))
    ref = grads(*hyper_noncausal(q, k, v, 0.3, cfg, gen(1)), weights, (q, k, v))
    assert_grads_close(got, ref, tolerance(torch.float32))
    exact = grads(*naive_attention(q, k, v, scale=0.3, return_lse=True), weights, (q, k, v))
    assert_grads_close(got, exact, max(tolerance(torch.float32), 1e-3))


def test_fused_gradients_accumulate_duplicate_samples():
    # 19 draws with replacement from 20 keys: some key repeats (probability 1 - 20!/20^19).
    q, k, v = random_qkv(1, 2, 1, 30, 20, 16, dtype=torch.float32, device=DEVICE,
                         requires_grad=True)
    cfg = HyperConfig(block_size=8, sample_size=19, min_seq_len=0, lsh_bits=3)
    weights = loss_weights(q, v)
    got = grads(*hyper_noncausal_fused(q, k, v, 0.25, cfg, gen(4)), weights, (q, k, v))
    ref = grads(*hyper_noncausal(q, k, v, 0.25, cfg, gen(4)), weights, (q, k, v))
    assert_grads_close(got, ref, tolerance(torch.float32))


@pytest.mark.parametrize("cfg", [
    HyperConfig(block_size=16, sample_size=0, min_seq_len=0, lsh_bits=3),
    HyperConfig.full_budget(60),
])
def test_fused_gradients_without_samples(cfg):
    # Blocks only (no sampled keys); with one block covering everything, exact attention.
    q, k, v = random_qkv(2, 2, 2, 45, 60, 16, 24, dtype=torch.float32, device=DEVICE,
                         requires_grad=True)
    weights = loss_weights(q, v)
    got = grads(*hyper_noncausal_fused(q, k, v, 0.25, cfg, gen(2)), weights, (q, k, v))
    ref = grads(*hyper_noncausal(q, k, v, 0.25, cfg, gen(2)), weights, (q, k, v))
    assert_grads_close(got, ref, tolerance(torch.float32))
    if cfg.sample_size == 0 and cfg.block_size >= 60:
        exact = grads(*naive_attention(q, k, v, scale=0.25, return_lse=True), weights, (q, k, v))
        assert_grads_close(got, exact, max(tolerance(torch.float32), 1e-3))


# (method, config, dispatch module and its predicate patched to force the fused path,
#  fused module and its entry point)
FUSED_DISPATCH = {
    "hyper": (HyperConfig(block_size=16, sample_size=16, min_seq_len=32, lsh_bits=3),
              hyper_method, "use_fused", hyper_fused, "hyper_noncausal_fused"),
    "kde": (KDEConfig(block_size=16, sample_size=16, kde_samples=16, min_seq_len=32, lsh_bits=3),
            kde_method, "use_fused", kde_fused, "kde_noncausal_fused"),
}


@pytest.mark.parametrize("method,N,M", [("hyper", 128, 128), ("hyper", 100, 140),
                                        ("kde", 100, 100)])
def test_fused_gradients_through_causal_recursion(method, N, M, monkeypatch):
    cfg, dispatch, predicate, module, name = FUSED_DISPATCH[method]
    fused = getattr(module, name)
    q, k, v = random_qkv(1, 2, 1, N, M, 16, dtype=torch.float32, device=DEVICE,
                         requires_grad=True)
    weights = loss_weights(q, v)

    def run():
        return kernelsketch.attention(q, k, v, method=method, is_causal=True, config=cfg,
                                      return_lse=True, generator=gen(5))

    ref = grads(*run(), weights, (q, k, v))
    calls = []
    monkeypatch.setattr(dispatch, predicate, lambda *args: True)
    monkeypatch.setattr(module, name, lambda *args: calls.append(1) or fused(*args))
    got = grads(*run(), weights, (q, k, v))
    assert calls, "the fused path was not taken"
    assert_grads_close(got, ref, tolerance(torch.float32))


def test_kde_fused_gradients_match_torch_path():
    # KDEformer's AMM samples through the same kernels (its distribution carries no gradient).
    q, k, v = random_qkv(2, 4, 2, 50, 90, 16, 24, dtype=torch.float32, device=DEVICE,
                         requires_grad=True)
    cfg = KDEConfig(block_size=16, sample_size=24, kde_samples=16, min_seq_len=0, lsh_bits=4)
    weights = loss_weights(q, v)
    got = grads(*kde_noncausal_fused(q, k, v, 0.25, cfg, gen(3)), weights, (q, k, v))
    ref = grads(*kde_noncausal(q, k, v, 0.25, cfg, gen(3)), weights, (q, k, v))
    assert_grads_close(got, ref, tolerance(torch.float32))
