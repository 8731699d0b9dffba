"""The CPU torch path's step-wise scan and pair features (attn/polysketch/naive.py) against
the float64 materialised evaluation of the same sketched scores.

The tests elsewhere run one scan step (their sequences are shorter than STEP_ROWS keys);
here STEP_ROWS is made small so that the state is carried over several steps, the key
blocks before the first query's block are skipped, and the linear form sums several key
and query steps. Deterministic float64 inputs: the sums are the same non-negative terms in
another order, so the tolerances are rounding only.
"""

import pytest
import torch

import kernelsketch as ks
import kernelsketch.attn.polysketch.method as ps
from kernelsketch.attn.polysketch import PolySketchConfig, PolySketchFeatures, naive
from kernelsketch.attn.polysketch.features import pair_features, pair_weights, self_tensor

from ..reference import randn_like, random_qkv
from .test_polysketch import naive_sketched


def seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(params=[1, 7, 16])
def step_rows(request, monkeypatch):
    """Scan steps of 1 block (or 1 row), several blocks, or more rows than blocks hold."""
    monkeypatch.setattr(naive, "STEP_ROWS", request.param)
    monkeypatch.setattr(ps, "use_quadratic", lambda *a: False)  # the r²-feature forms
    return request.param


@pytest.mark.parametrize("r", [1, 2, 3, 8, 9])
def test_weighted_pair_features_give_the_self_tensored_products(r, torch_generator):
    x = torch.randn(5, 3, r, generator=torch_generator, dtype=torch.float64)
    y = torch.randn(7, r, generator=torch_generator, dtype=torch.float64)
    px, py = pair_features(x), pair_features(y)
    assert px.shape == (5, 3, (r // 2 + 1) * r)
    got = (px * pair_weights(r, dtype=x.dtype)) @ py.T
    torch.testing.assert_close(got, (x @ y.T) ** 2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, self_tensor(x) @ self_tensor(y).T, rtol=1e-12, atol=1e-12)


def test_pair_features_are_row_major_and_differentiable(torch_generator):
    x = torch.randn(4, 6, generator=torch_generator, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 6, generator=torch_generator, dtype=torch.float64)
    p = pair_features(x)
    assert p.is_contiguous() and pair_features(x.detach()).is_contiguous()
    torch.testing.assert_close(p, pair_features(x.detach()), rtol=0, atol=0)
    w = randn_like(torch.empty(4, 5, dtype=x.dtype), torch_generator)
    (g,) = torch.autograd.grad(((p * pair_weights(6, dtype=x.dtype)) @ pair_features(y).T
                                * w).sum(), x)
    (g_ref,) = torch.autograd.grad((((x @ y.T) ** 2) * w).sum(), x)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


SHAPES = [  # (B, Hq, Hkv, N, M, D, Dv)
    (2, 4, 2, 37, 37, 8, 8),
    (1, 4, 1, 21, 45, 8, 4),   # more keys than queries: key blocks before the first query's
    (1, 2, 2, 30, 13, 8, 8),   # more queries than keys
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block_size", [1, 4])
@pytest.mark.parametrize("exact_local", [True, False])
def test_causal_scan_over_several_steps_equals_naive_evaluation(shape, block_size, exact_local,
                                                               step_rows):
    B, Hq, Hkv, N, M, D, Dv = shape
    q, k, v = random_qkv(B, Hq, Hkv, N, M, D, Dv)
    cfg = PolySketchConfig(sketch_size=7, block_size=block_size, exact_local=exact_local)
    out, lse = ks.attention(q, k, v, method="polysketch", is_causal=True, config=cfg,
                            generator=seeded(5), return_lse=True)
    feats = PolySketchFeatures(D, cfg, generator=seeded(5))
    ref, ref_lse = naive_sketched(q, k, v, feats, degree=4, block_size=block_size,
                                  exact_local=exact_local, is_causal=True, return_lse=True)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_linear_form_over_several_steps_equals_naive_evaluation(shape, step_rows):
    B, Hq, Hkv, N, M, D, Dv = shape
    q, k, v = random_qkv(B, Hq, Hkv, N, M, D, Dv)
    cfg = PolySketchConfig(degree=6, sketch_size=8)
    out, lse = ks.attention(q, k, v, method="polysketch", config=cfg, generator=seeded(6),
                            return_lse=True)
    feats = PolySketchFeatures(D, cfg, generator=seeded(6))
    ref, ref_lse = naive_sketched(q, k, v, feats, degree=6, block_size=1, exact_local=True,
                                  is_causal=False, return_lse=True)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("is_causal", [True, False])
def test_gradients_over_several_steps_match_naive_evaluation(is_causal, step_rows,
                                                             torch_generator):
    q, k, v = random_qkv(1, 4, 2, 19, 23, 8, requires_grad=True)
    cfg = PolySketchConfig(sketch_size=8, block_size=3)
    out, lse = ks.attention(q, k, v, method="polysketch", is_causal=is_causal, config=cfg,
                            generator=seeded(2), return_lse=True)
    w1, w2 = randn_like(out, torch_generator), randn_like(lse, torch_generator)
    g = torch.autograd.grad((out * w1).sum() + (lse * w2).sum(), (q, k, v))
    feats = PolySketchFeatures(8, cfg, generator=seeded(2))
    ref, ref_lse = naive_sketched(q, k, v, feats, degree=4, block_size=3, exact_local=True,
                                  is_causal=is_causal, return_lse=True)
    g_ref = torch.autograd.grad((ref * w1).sum() + (ref_lse * w2).sum(), (q, k, v))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_causal_scan_never_sees_later_keys(step_rows, torch_generator):
    # Changing the keys and values after position t leaves rows <= t bit for bit unchanged.
    q, k, v = random_qkv(1, 2, 1, 40, 40, 8)
    t = 17
    k2, v2 = k.clone(), v.clone()
    k2[:, :, t + 1 :] = randn_like(k2[:, :, t + 1 :], torch_generator)
    v2[:, :, t + 1 :] = randn_like(v2[:, :, t + 1 :], torch_generator)
    cfg = PolySketchConfig(sketch_size=8, block_size=4, normalize=False)
    a, b = (ks.attention(q, kk, vv, method="polysketch", is_causal=True, config=cfg,
                         generator=seeded(0), scale=0.05) for kk, vv in ((k, v), (k2, v2)))
    torch.testing.assert_close(a[:, :, : t + 1], b[:, :, : t + 1], rtol=0, atol=0)
    assert not torch.allclose(a[:, :, t + 1 :], b[:, :, t + 1 :])


# ---- bfloat16 on CPU: products in bfloat16, states in float32 -----------------------------


def test_product_dtype_is_bfloat16_only_for_bfloat16_on_cpu():
    cpu = torch.device("cpu")
    assert naive.product_dtype(torch.bfloat16, cpu) == torch.bfloat16
    # float16 products ran no faster than float32 on CPU (BENCHMARKS.md): float32
    for dtype, want in ((torch.float16, torch.float32), (torch.float32, torch.float32),
                        (torch.float64, torch.float64)):
        assert naive.product_dtype(dtype, cpu) == want
    assert naive.product_dtype(torch.bfloat16, torch.device("meta")) == torch.float32


@pytest.mark.parametrize("is_causal", [True, False])
def test_bfloat16_scan_follows_the_float64_evaluation_of_the_same_sketch(is_causal,
                                                                       monkeypatch):
    # bfloat16 inputs through the bfloat16 products of the scan (several steps) against the
    # float64 evaluation of the same sketch on the same (bfloat16) values. Measured over 100
    # seeds (9000-9099; 1 query and key head pair, 1024 tokens, D = r = 16, b = 16, steps of
    # 32 rows): relative error mean 0.0084 / 0.0089 (causal / not), sd 0.0004 / 0.0006, max
    # 0.0093 / 0.0108; lse absolute error mean 0.026 / 0.025, sd 0.004, max 0.038. Thresholds
    # 0.02 (> mean + 18 sd) and 0.1 (2.6x the largest of 200).
    monkeypatch.setattr(naive, "STEP_ROWS", 32)
    monkeypatch.setattr(ps, "use_quadratic", lambda *a: False)
    g = seeded(9000)
    q, k, v = (torch.randn(1, h, 1024, 16, generator=g).bfloat16() for h in (2, 1, 1))
    kw = {"method": "polysketch", "is_causal": is_causal, "return_lse": True,
          "config": PolySketchConfig(sketch_size=16, block_size=16)}
    ref, ref_lse = ks.attention(q.double(), k.double(), v.double(), generator=seeded(1), **kw)
    out, lse = ks.attention(q, k, v, generator=seeded(1), **kw)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    assert float((out.double() - ref).norm() / ref.norm()) < 0.02
    assert float((lse.double() - ref_lse).abs().max()) < 0.1


def test_bfloat16_scan_keeps_its_running_state_in_float32(monkeypatch):
    # 8192 equal keys with unit values in blocks of 16, one block per step: the running
    # state grows to 512 times each step's increment. A bfloat16 state (8 bits) stops
    # growing once the increments fall below half its spacing: lse 0.25-0.28 off (sketch
    # seeds 0, 1; measured by making the state bfloat16). The float32 state keeps the
    # denominators to the products' own rounding (all keys equal: their errors add up, lse
    # 0.018-0.019 off; 0.010-0.019 over seeds 0-3 at 16384 tokens). Threshold 0.05.
    monkeypatch.setattr(naive, "STEP_ROWS", 16)
    monkeypatch.setattr(ps, "use_quadratic", lambda *a: False)
    x = torch.linspace(-1.0, 1.0, 16, dtype=torch.float64)
    q = k = x.expand(1, 1, 8192, 16).bfloat16()
    v = torch.ones(1, 1, 8192, 16, dtype=torch.bfloat16)
    kw = {"method": "polysketch", "is_causal": True, "return_lse": True,
          "config": PolySketchConfig(sketch_size=16, block_size=16)}
    _, ref_lse = ks.attention(q.double(), k.double(), v.double(), generator=seeded(0), **kw)
    _, lse = ks.attention(q, k, v, generator=seeded(0), **kw)
    assert float(ref_lse[..., -1]) > 10.0  # a denominator of e^10 at the end
    assert float((lse.double() - ref_lse).abs().max()) < 0.05
