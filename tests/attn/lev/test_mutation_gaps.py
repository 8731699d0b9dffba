"""LevAttention behaviour that mutants surviving tools/mutation.py showed untested (issue 22).

A universal set that no key reaches (eps above every leverage score) was never run: the
branch that pads it with one masked slot survived both ``idx.shape[+1]`` (the head axis)
and a ``torch.full`` without its fill value (a TypeError on that input).
"""

import pytest
import torch

import kernelsketch as ks
from kernelsketch.attn.lev.config import LevConfig
from kernelsketch.attn.lev.selection import universal_set


def test_no_key_reaching_eps_leaves_the_causal_window(torch_generator):
    """With eps = 1 no key of 40 random ones (d = 4, p = 2: scores sum to rank <= 16) is in
    the universal set, so the output is causal sliding-window attention alone, checked
    against a float64 masked softmax."""
    g = torch_generator
    B, H, N, D, w = 1, 2, 40, 4, 8
    q, k = (torch.randn(B, H, N, D, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, H, N, 3, generator=g, dtype=torch.float64)
    assert universal_set(k, 2, 1.0, None).shape[-1] == 0
    out = ks.attention(q, k, v, method="lev", is_causal=True,
                       config=LevConfig(eps=1.0, window=w, sink=0))
    i, j = torch.arange(N)[:, None], torch.arange(N)[None]
    scores = (q @ k.transpose(-1, -2)) * D**-0.5
    ref = torch.softmax(scores.masked_fill(~((j <= i) & (j > i - w)), float("-inf")), -1) @ v
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_one_key_set_for_all_queries_takes_one_sdpa_call(torch_generator, monkeypatch):
    # lev_forward: non-causal softmax over one universal set (no window, sink or eps) and no
    # lse is one fused SDPA call on the selected keys. Mutant (attn.lev --sample 80
    # --sample-seed 23): `config.kind == "SOFTMAX"` never takes it (the masked torch path
    # computes the same output, so only the call shows it). Both match float64 softmax over
    # the selected keys.
    from kernelsketch.attn.lev import method as lev_method

    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    g = torch_generator
    q = torch.randn(1, 4, 30, 8, generator=g, dtype=torch.float64)
    k = torch.randn(1, 2, 50, 8, generator=g, dtype=torch.float64)
    v = torch.randn(1, 2, 50, 6, generator=g, dtype=torch.float64)
    cfg = LevConfig(budget=12, window=0, sink=0)
    out, lse = lev_method.lev_forward(q, k, v, is_causal=False, scale=0.4, config=cfg,
                                      generator=None, need_lse=False)
    assert calls == [1] and lse is None
    idx = universal_set(k, 2, None, 12)
    assert bool((idx >= 0).all()) and idx.shape == (1, 2, 12)
    ks_ = torch.stack([k[0, h, idx[0, h]] for h in range(2)])[None].repeat_interleave(2, 1)
    vs_ = torch.stack([v[0, h, idx[0, h]] for h in range(2)])[None].repeat_interleave(2, 1)
    ref = torch.softmax(q @ ks_.transpose(-1, -2) * 0.4, -1) @ vs_
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_selector_seed_is_a_64_bit_unsigned_int():
    # LevSelector's seed feeds a PolySketch seed (uint64). Mutant: check_int without max.
    from kernelsketch.attn.lev.selection import LevSelector

    assert LevSelector(budget=4, seed=2**64 - 1).seed == 2**64 - 1
    with pytest.raises(ValueError, match="seed"):
        LevSelector(budget=4, seed=2**64)
