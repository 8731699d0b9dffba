"""Fuzz: the attention layers and the LevAttention selection objects.

SketchedAttention, PolySketchAttention (forward and token-by-token decoding),
LevKVCache, LevSelector and universal_set with fuzzed arguments and inputs:
a clear TypeError/ValueError naming an argument, or finite output (valid key
indices for the selectors), inputs untouched.
"""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernelsketch as ks
from kernelsketch.attn.lev import LevKVCache, LevSelector, universal_set
from kernelsketch.attn.polysketch import PolySketchAttention

from .contract import (
    assert_finite,
    assert_unchanged,
    assert_within_values,
    call_or_clear_error,
    examples,
    snapshot,
)

pytestmark = pytest.mark.timeout(300)


def ints():
    return st.one_of(st.integers(-2, 70), st.sampled_from([10**9, 2**63, 2**64]), st.booleans(),
                     st.floats(allow_nan=True), st.none(), st.just("3"))


def reals():
    return st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                     st.sampled_from([1e-30, 1e-3, 0.25, 1.0, 1e10]), st.just("0.1"))


@st.composite
def inputs(draw, *, d=None, kv_heads=None, dtype=None, length=None):
    """Seeded q [B, Hq, N, D], k [B, Hkv, N, D], v [B, Hkv, N, Dv] of moderate magnitude."""
    B, G = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    Hkv = kv_heads or draw(st.integers(1, 2))
    N = length or draw(st.integers(1, 40))
    D = d or draw(st.sampled_from([2, 4, 8]))
    dtype = dtype or draw(st.sampled_from([torch.float32, torch.float64]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    scale = 10.0 ** draw(st.integers(-8, 8))
    q = torch.randn(B, Hkv * G, N, D, generator=g, dtype=dtype) * scale
    k = torch.randn(B, Hkv, N, D, generator=g, dtype=dtype) * scale
    v = torch.randn(B, Hkv, N, draw(st.sampled_from([1, 3])), generator=g, dtype=dtype)
    return q, k, v


def quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


@settings(max_examples=examples(40))
@given(method=st.sampled_from(ks.available_methods()), seed=ints(), is_causal=st.one_of(
    st.booleans(), st.just(1)), scale=reals(), qkv=inputs())
def test_sketched_attention_layer(method, seed, is_causal, scale, qkv):
    args = ("method", "seed", "is_causal", "scale")
    layer = call_or_clear_error(
        lambda: ks.SketchedAttention(method, seed=seed, is_causal=is_causal, scale=scale), args)
    if layer is None:
        return
    q, k, v = qkv
    before = snapshot(q, k, v)
    out = call_or_clear_error(lambda: quiet(lambda: layer(q, k, v)), ("q", "k", "scale"))
    assert_unchanged(before, q, k, v)
    if out is None:  # softmax logits beyond float range only
        return
    assert_finite("out", out)
    assert_within_values(out, v, with_zero=is_causal or method in ("polynomial", "polysketch"))
    torch.testing.assert_close(quiet(lambda: layer(q, k, v)), out, rtol=0, atol=0)


@settings(max_examples=examples(30))
@given(head_dim=st.one_of(st.just(4), ints()), degree=st.sampled_from([2, 4, 6]),
       sketch=st.sampled_from(["gaussian", "hadamard", "learned", "learned-mlp"]),
       sketch_size=st.sampled_from([4, 16]), block_size=st.one_of(st.integers(1, 8), ints()),
       exact_local=st.booleans(), seed=ints(), scale=reals(), norm_affine=st.booleans(),
       data=st.data())
def test_polysketch_layer_forward_and_decoding(head_dim, degree, sketch, sketch_size, block_size,
                                               exact_local, seed, scale, norm_affine, data):
    config = call_or_clear_error(lambda: ks.PolySketchConfig(
        degree=degree, sketch=sketch, sketch_size=sketch_size, block_size=block_size,
        exact_local=exact_local), ("degree", "sketch", "sketch_size", "block_size"))
    if config is None:
        return
    layer = call_or_clear_error(lambda: PolySketchAttention(
        head_dim, config, scale=scale, seed=seed, norm_affine=norm_affine),
        ("head_dim", "scale", "seed"))
    if layer is None:
        return
    q, k, v = data.draw(inputs(d=head_dim, dtype=torch.float32, length=data.draw(
        st.integers(1, 12))))
    before = snapshot(q, k, v)
    with torch.no_grad():
        out = layer(q, k, v)
        assert_finite("out", out)
        assert_within_values(out, v, with_zero=True)
        state = layer.init_state(q.shape[0], k.shape[1], v.shape[-1])
        for t in range(q.shape[2]):
            result = call_or_clear_error(lambda t=t, state=state: layer.step(
                q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], state), ("scale",))
            if result is None:  # the float32 state overflowed: said so
                break
            step, state = result
            assert_finite("step", step)
            torch.testing.assert_close(step[:, :, 0], out[:, :, t], rtol=1e-3, atol=1e-4)
    assert_unchanged(before, q, k, v)


@settings(max_examples=examples(30))
@given(budget=ints(), eps=st.one_of(st.none(), reals()), window=ints(), p=st.sampled_from(
    [2, 4, 3, 10**12]), ridge=st.one_of(st.just(0.0), reals()), evict_block=ints(),
    sketch_size=st.one_of(st.none(), st.sampled_from([8, 10**9])), seed=ints(),
    blocks=st.lists(st.integers(1, 9), min_size=1, max_size=5), data=st.data())
def test_lev_kv_cache_appends_and_attends(budget, eps, window, p, ridge, evict_block,
                                          sketch_size, seed, blocks, data):
    args = ("budget", "eps", "window", "p", "ridge", "evict_block", "sketch_size", "seed")
    cache = call_or_clear_error(lambda: LevKVCache(
        budget=budget, eps=eps, window=window, p=p, ridge=ridge, evict_block=evict_block,
        sketch_size=sketch_size, seed=seed), args)
    if cache is None:
        return
    q, k, v = data.draw(inputs(length=sum(blocks), kv_heads=1, d=4))
    before = snapshot(q, k, v)
    start = 0
    for m in blocks:
        block = slice(start, start + m)
        if call_or_clear_error(lambda b=block: cache.append(k[:, :, b], v[:, :, b]),
                               args + ("k", "v")) is None:
            return
        start += m
        out = call_or_clear_error(lambda b=block: cache.attend(q[:, :, b]), ("q", "k", "scale"))
        if out is not None:
            assert_finite("out", out)
            assert_within_values(out, v, with_zero=True)
    assert_unchanged(before, q, k, v)


@settings(max_examples=examples(40))
@given(p=st.sampled_from([2, 4, 6]), mode=st.sampled_from(["eps", "budget"]), eps=reals(),
       budget=ints(), ridge=st.one_of(st.just(0.0), reals()),
       sketch_size=st.one_of(st.none(), st.sampled_from([8, 10**9])),
       magnitude=st.integers(-30, 30), qkv=inputs(), shards=st.integers(1, 3))
def test_lev_selection_returns_valid_key_indices(p, mode, eps, budget, ridge, sketch_size,
                                                 magnitude, qkv, shards):
    k = qkv[1] * 10.0 ** magnitude
    if not torch.isfinite(k).all():
        return
    kwargs = {"eps": eps} if mode == "eps" else {"budget": budget}
    args = ("p", "eps", "budget", "ridge", "sketch_size", "k")
    before = snapshot(k)
    idx = call_or_clear_error(lambda: universal_set(
        k, p, ridge=ridge, sketch_size=sketch_size, generator=torch.Generator().manual_seed(0),
        **kwargs), args)
    assert_unchanged(before, k)
    if idx is not None:
        M = k.shape[2]
        assert idx.dtype == torch.int64 and idx.shape[:2] == k.shape[:2]
        assert ((idx == -1) | ((idx >= 0) & (idx < M))).all()
        kept = idx.clamp(min=0) + (idx < 0) * M  # padding last: ascending before it
        assert (kept.diff(dim=-1) > 0).all()
    selectors = []
    for part in k.tensor_split(shards, dim=2):
        sel = call_or_clear_error(lambda: LevSelector(p=p, ridge=ridge, sketch_size=sketch_size,
                                                      **kwargs), args)
        if sel is None or part.shape[2] == 0:
            return
        if call_or_clear_error(lambda sel=sel, part=part: sel.update(part), args) is None:
            return
        selectors.append(sel)
    merged = selectors[0]
    for other in selectors[1:]:
        merged = merged.merge(other)
    pos = merged.select()
    assert ((pos == -1) | ((pos >= 0) & (pos < k.shape[2]))).all()
    assert_finite("scores", merged.scores(k))
