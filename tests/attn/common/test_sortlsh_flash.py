"""The CPU fast path of the sortLSH methods (one flash call per estimate) against the torch path.

Both paths draw the hash and the samples from the generator in the same order,
so for the same generator state they compute the same function: in float64 to
rounding (the fast path is tested against the float64 reference), in float32
to float32 rounding; gradients included.
"""

import pytest
import torch

import kernelsketch as ks
from kernelsketch.attn.common.metrics import relative_error
from kernelsketch.attn.hyper import HyperConfig, hyper_noncausal
from kernelsketch.attn.hyper import method as hyper_method
from kernelsketch.attn.hyper.fused import hyper_noncausal_fused
from kernelsketch.attn.kde import KDEConfig, kde_noncausal
from kernelsketch.attn.kde import method as kde_method
from kernelsketch.attn.kde.fused import kde_noncausal_fused

from ..reference import random_qkv

SHAPES = [  # (B, Hq, Hkv, N, M, D, Dv)
    (2, 4, 2, 77, 130, 16, 16),  # GQA, ragged blocks
    (1, 3, 1, 130, 77, 8, 12),   # more queries than keys, Dv != D
]
# (exact_first, exact_last): none, sinks, sinks + window, window only, everything exact.
EXACT_SETS = [(0, 0), (3, 0), (2, 5), (0, 7), (100, 100)]
ESTIMATORS = {
    "hyper": (hyper_noncausal, hyper_noncausal_fused,
              lambda **kw: HyperConfig(block_size=16, sample_size=24, lsh_bits=4, **kw)),
    "hyper-value-norm": (hyper_noncausal, hyper_noncausal_fused,
                         lambda **kw: HyperConfig(block_size=16, sample_size=24, lsh_bits=4,
                                                  sampling="value_norm", **kw)),
    "kde": (kde_noncausal, kde_noncausal_fused,
            lambda **kw: KDEConfig(block_size=16, sample_size=24, kde_samples=20, lsh_bits=4,
                                   **kw)),
}


def both(name, q, k, v, seed, exact, **cfg):
    torch_path, fast_path, config = ESTIMATORS[name]
    cfg = config(min_seq_len=0, **cfg)
    a = torch_path(q, k, v, 0.3, cfg, torch.Generator().manual_seed(seed), *exact)
    b = fast_path(q, k, v, 0.3, cfg, torch.Generator().manual_seed(seed), *exact)
    return a, b


@pytest.mark.parametrize("name", list(ESTIMATORS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("exact", EXACT_SETS)
def test_fast_path_equals_the_float64_reference_with_gradients(name, shape, exact,
                                                               torch_generator, seed):
    B, Hq, Hkv, N, M, D, Dv = shape
    q, k, v = random_qkv(B, Hq, Hkv, N, M, D, Dv, requires_grad=True, generator=torch_generator)
    (out_a, lse_a), (out_b, lse_b) = both(name, q, k, v, seed, exact)
    torch.testing.assert_close(out_b, out_a, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(lse_b, lse_a, rtol=1e-11, atol=1e-12)
    w = torch.randn(out_a.shape, dtype=out_a.dtype, generator=torch_generator)
    g_a = torch.autograd.grad((out_a * w).sum() + lse_a.sum(), (q, k, v))
    g_b = torch.autograd.grad((out_b * w).sum() + lse_b.sum(), (q, k, v))
    for a, b in zip(g_a, g_b):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_fast_path_in_float32_matches_the_torch_path_in_float32(name, torch_generator, seed):
    q, k, v = random_qkv(2, 4, 2, 96, 160, 16, dtype=torch.float32, generator=torch_generator)
    (out_a, lse_a), (out_b, lse_b) = both(name, q, k, v, seed, (2, 5), sketch_dtype="input")
    assert out_b.dtype == torch.float32
    assert relative_error(out_b, out_a) < 1e-5 and relative_error(lse_b, lse_a) < 1e-6


@pytest.mark.statistical
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_bfloat16_sketch_products_round_the_float32_estimate(name, torch_generator, seed):
    # The same estimate (same hash, same samples) with q, k, v rounded to bfloat16 in the
    # kernel. Over 300 seeds: relative error of out 3.66e-3 +- 1.2e-4 (max 4.0e-3), of lse
    # 2.5e-4 +- 1.5e-5 (max 3.2e-4); the bounds sit over 17 sd from the mean.
    q, k, v = random_qkv(2, 4, 2, 96, 160, 16, dtype=torch.float32, generator=torch_generator)
    (out_a, lse_a), (out_b, lse_b) = both(name, q, k, v, seed, (2, 5), sketch_dtype="bfloat16")
    assert out_b.dtype == torch.bfloat16 and lse_b.dtype == torch.float32
    assert 1.5e-3 < relative_error(out_b.float(), out_a) < 6e-3
    assert relative_error(lse_b, lse_a) < 6e-4


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("method", ["hyper", "kde"])
def test_auto_sketch_dtype_is_bfloat16_only_where_the_cpu_multiplies_it(method, native,
                                                                        torch_generator,
                                                                        monkeypatch):
    from kernelsketch.attn.common import exact

    monkeypatch.setattr(exact, "native_bf16_cpu", lambda: native)
    q, k, v = random_qkv(1, 4, 2, 300, 300, 16, dtype=torch.float32, generator=torch_generator)
    cls = ks.attn.get_method(method).config_cls

    def run(setting):
        return ks.attention(q, k, v, method=method, is_causal=True, return_lse=True,
                            config=cls(block_size=32, sample_size=32, min_seq_len=64,
                                       sketch_dtype=setting),
                            generator=torch.Generator().manual_seed(0))

    auto, same = run("auto"), run("bfloat16" if native else "input")
    assert auto[0].dtype == torch.float32  # the call's output keeps the input dtype
    assert torch.equal(auto[0], same[0]) and torch.equal(auto[1], same[1])
    assert exact.sketch_product_dtype(q.double(), "bfloat16") == torch.float64
    assert exact.sketch_product_dtype(q.bfloat16(), "input") == torch.bfloat16


@pytest.mark.parametrize("method,module", [("hyper", hyper_method), ("kde", kde_method)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("is_causal", [False, True])
def test_attention_dispatches_cpu_low_precision_to_the_fast_path(method, module, dtype, is_causal,
                                                                  torch_generator, monkeypatch):
    calls = []
    real = module.use_fused
    monkeypatch.setattr(module, "use_fused", lambda q, v, c: calls.append(real(q, v, c)) or real(q, v, c))
    q, k, v = random_qkv(1, 4, 2, 200, 200, 16, dtype=dtype, generator=torch_generator)
    cfg = ks.attn.get_method(method).config_cls.full_budget(200).replace(
        block_size=32, sample_size=500, sink=3, window=9)
    out = ks.attention(q, k, v, method=method, config=cfg, is_causal=is_causal,
                       generator=torch.Generator().manual_seed(0))
    assert calls == [True]
    ref = ks.attention(q.double(), k.double(), v.double(), is_causal=is_causal)
    # Every key sampled with weight 1 outside its block: exact up to the dtype's rounding.
    assert out.dtype == dtype
    assert relative_error(out, ref) < (1e-5 if dtype == torch.float32 else 2e-2)


@pytest.mark.statistical
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", ["hyper", "kde"])
def test_bfloat16_sketch_gradients_track_the_float32_ones(method, torch_generator, seed):
    # Training through the default sketch_dtype: the same causal estimate (same draws) with
    # bfloat16 and with float32 products (sketched blocks and exact leaves), out and the
    # gradients of q, k and v. Over 150 seeds: relative differences out 3.4e-3 +- 1.0e-4,
    # gradients 4.4e-3 to 5.1e-3 +- 1.6e-4 (max 5.6e-3); the bounds sit over 18 sd from
    # every mean.
    q, k, v = (torch.randn(1, h, 300, 16, generator=torch_generator).requires_grad_()
               for h in (4, 2, 2))
    w = torch.randn(1, 4, 300, 16, generator=torch_generator)
    cls = ks.attn.get_method(method).config_cls
    got = {}
    for setting in ("input", "bfloat16"):
        cfg = cls(block_size=32, sample_size=32, min_seq_len=64, sink=2, window=8,
                  sketch_dtype=setting)
        out = ks.attention(q, k, v, method=method, config=cfg, is_causal=True,
                           generator=torch.Generator().manual_seed(seed))
        got[setting] = (out, *torch.autograd.grad((out * w).sum(), (q, k, v)))
    for a, b in zip(got["bfloat16"], got["input"]):
        assert a.dtype == torch.float32
        assert 1.5e-3 < relative_error(a, b) < 8e-3
