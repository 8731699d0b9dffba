"""The always-exact keys of the sortLSH methods (``sink``, ``window``) and the exact fallback.

Which pairs each estimate counts is read off directly: with q = 0 every logit
is 0, and with one-hot values (v_j = e_j) the output row i is the indicator of
the keys counted for query i divided by their number, so a pair counted twice
shows as a doubled entry and a missing pair as a zero. Without samples every
counted pair has weight 1.
"""

import warnings

import pytest
import torch

import kernelsketch as ks
from kernelsketch.attn.common.causal import causal_levels
from kernelsketch.attn.common.exact import ExactFallbackWarning
from kernelsketch.attn.hyper import HyperConfig
from kernelsketch.attn.hyper import method as hyper_method
from kernelsketch.attn.kde import KDEConfig
from kernelsketch.attn.kde import method as kde_method

from ..reference import (
    NORMALISER_Z_MAX,
    causal_normaliser_draws,
    naive_attention,
    random_qkv,
)

CONFIGS = {"hyper": HyperConfig, "kde": KDEConfig}


def counted_pairs(method, n, dtype, sink, window, min_seq_len=8, seed=0, block_size=4):
    """[Hq, n, n] fraction of row i's weight on key j (0 or 1/|counted keys|)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.zeros(1, 2, n, 8, dtype=dtype)
    k = torch.randn(1, 1, n, 8, generator=g).to(dtype)
    v = torch.eye(n, dtype=dtype).reshape(1, 1, n, n)
    cfg = CONFIGS[method](block_size=block_size, sample_size=0, lsh_bits=3,
                          min_seq_len=min_seq_len, sink=sink, window=window,
                          sketch_dtype="input")  # weights to float32 rounding
    out = ks.attention(q, k, v, method=method, config=cfg, is_causal=True, generator=g)
    return out[0].double()


@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # torch path, fast path
@pytest.mark.parametrize("sink,window", [(0, 0), (3, 0), (0, 5), (4, 12), (2, 40)])
def test_causal_counts_sink_and_window_exactly_once_and_never_the_future(method, dtype, sink,
                                                                         window):
    n = 70  # 4 levels: leaves of 5 keys, off-diagonal blocks of 5 (exact) to 40 keys
    w = counted_pairs(method, n, dtype, sink, window)
    leaf = causal_levels(n, 8)[1]
    i = torch.arange(n).reshape(n, 1)
    j = torch.arange(n).reshape(1, n)
    assert torch.all(w[:, j.expand(n, n) > i] == 0)  # causal never sees the future
    nonzero = w > 0
    count = nonzero.sum(-1, keepdim=True)
    # Every counted pair counted once: all entries of a row equal 1/|counted keys|.
    torch.testing.assert_close(w, nonzero.double() / count, rtol=1e-6, atol=1e-7)
    must = (j <= i) & ((j < sink) | (j > i - window) | (i // leaf == j // leaf))
    assert torch.all(nonzero[:, must.expand(n, n)])


@pytest.mark.parametrize("method", list(CONFIGS))
def test_sink_and_window_cost_nothing_when_they_cover_every_pair(method, torch_generator):
    q, k, v = random_qkv(1, 4, 2, 90, 90, 8, generator=torch_generator)
    cfg = CONFIGS[method](block_size=4, sample_size=4, lsh_bits=3, min_seq_len=8, sink=2,
                          window=90, sketch_dtype="input")  # float32 to its rounding
    for dtype in (torch.float64, torch.float32):
        out, lse = ks.attention(q.to(dtype), k.to(dtype), v.to(dtype), method=method, config=cfg,
                                is_causal=True, return_lse=True,
                                generator=torch.Generator().manual_seed(0))
        ref, ref_lse = naive_attention(q, k, v, is_causal=True, return_lse=True)
        tol = 1e-12 if dtype == torch.float64 else 2e-6
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
        torch.testing.assert_close(lse.double(), ref_lse, rtol=tol, atol=tol)


@pytest.mark.statistical
@pytest.mark.parametrize("method,module", [("hyper", hyper_method), ("kde", kde_method)])
@pytest.mark.parametrize("fast", [False, True])
def test_causal_normaliser_with_sink_and_window_is_unbiased(method, module, fast, seed,
                                                            monkeypatch, measure):
    # The fast path is forced in float64.
    if fast:
        monkeypatch.setattr(module, "use_fused", lambda q, v, config: True)
    g = torch.Generator().manual_seed(seed)
    q, k, v = random_qkv(1, 2, 1, 64, 64, 8, scale=1.3, generator=g)
    cfg = CONFIGS[method](block_size=4, sample_size=3, lsh_bits=3, min_seq_len=8, sink=2,
                          window=3)
    gap, sem, truth = causal_normaliser_draws(method, q, k, v, cfg, g, trials=400)
    measure("max_z", float((gap / sem)[sem > 0].max()))
    # Mean within NORMALISER_Z_MAX standard errors of the truth on every row (the bound's
    # measurement: reference.py); rows the exact parts cover have sem = 0 and must match.
    assert torch.all(gap <= NORMALISER_Z_MAX * sem + 1e-9 * truth)


@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize("is_causal", [False, True])
def test_exact_fallback_is_announced(method, is_causal, torch_generator):
    q, k, v = random_qkv(1, 2, 2, 50, 50, 8, generator=torch_generator)
    cfg = CONFIGS[method](min_seq_len=64)
    with pytest.warns(ExactFallbackWarning, match=f"method='{method}' computed exact attention"):
        out = ks.attention(q, k, v, method=method, config=cfg, is_causal=is_causal)
    torch.testing.assert_close(out, naive_attention(q, k, v, is_causal=is_causal))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExactFallbackWarning)  # the sketch runs: no warning
        ks.attention(q, k, v, method=method, config=cfg.replace(min_seq_len=8),
                     is_causal=is_causal, generator=torch_generator)


@pytest.mark.parametrize("method", list(CONFIGS))
def test_causal_cpu_sketch_below_its_break_even_is_announced(method, torch_generator,
                                                            monkeypatch):
    from importlib import import_module

    from kernelsketch.attn.common.exact import NoSpeedupWarning

    q, k, v = random_qkv(1, 2, 2, 50, 50, 8, generator=torch_generator)
    cfg = CONFIGS[method](min_seq_len=8)
    module = import_module(f"kernelsketch.attn.{method}.method")
    assert module.CPU_CAUSAL_BREAK_EVEN > 50
    for break_even, warns in ((51, True), (50, False)):
        monkeypatch.setattr(module, "CPU_CAUSAL_BREAK_EVEN", break_even)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for is_causal in (True, False):  # non-causal never warns
                ks.attention(q, k, v, method=method, config=cfg, is_causal=is_causal,
                             generator=torch_generator)
        found = [w for w in caught if issubclass(w.category, NoSpeedupWarning)]
        assert len(found) == warns, [str(w.message) for w in caught]
        if warns:
            assert f"method='{method}' runs its sketch causal on CPU" in str(found[0].message)


@pytest.mark.parametrize("method", list(CONFIGS))
def test_half_precision_uses_its_own_break_even(method, torch_generator, monkeypatch):
    from importlib import import_module

    from kernelsketch.attn.common.exact import NoSpeedupWarning

    q, k, v = (t.to(torch.bfloat16) for t in random_qkv(1, 2, 2, 50, 50, 8,
                                                         generator=torch_generator))
    cfg = CONFIGS[method](min_seq_len=8)
    module = import_module(f"kernelsketch.attn.{method}.method")
    assert module.CPU_CAUSAL_BREAK_EVEN_HALF >= module.CPU_CAUSAL_BREAK_EVEN
    monkeypatch.setattr(module, "CPU_CAUSAL_BREAK_EVEN", 0)  # the float32 one must not count
    for break_even, warns in ((51, True), (50, False)):
        monkeypatch.setattr(module, "CPU_CAUSAL_BREAK_EVEN_HALF", break_even)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ks.attention(q, k, v, method=method, config=cfg, is_causal=True,
                         generator=torch_generator)
        found = [w for w in caught if issubclass(w.category, NoSpeedupWarning)]
        assert len(found) == warns, [str(w.message) for w in caught]
