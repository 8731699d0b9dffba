"""Fuzz: the attention function registered with transformers, under random masks.

Padding masks (each row: a run of real tokens, padded on the left or right, causal or
not, 4D boolean, 4D additive float or 2D) give, for every real query, what the
sequence gives alone through ``kernelsketch.attention``; any other mask is honoured
by "exact" and refused by a sketch with a ValueError naming the mask. LayerPatch
fields are checked.
"""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernelsketch as ks

transformers = pytest.importorskip("transformers", reason="needs the 'hf' extra (transformers)")

import kernelsketch.integrations.transformers as kst

from .contract import assert_finite, call_or_clear_error, examples

pytestmark = pytest.mark.timeout(300)

METHODS = ks.available_methods()


class Layer(torch.nn.Module):
    """What the function reads from a transformers attention module."""

    def __init__(self, is_causal):
        super().__init__()
        self.is_causal, self.layer_idx = is_causal, 0


@st.composite
def padded(draw):
    B, N = draw(st.integers(1, 3)), draw(st.integers(1, 20))
    causal = draw(st.booleans())
    keep = torch.zeros(B, 1, N, N, dtype=torch.bool)
    real = []
    for b in range(B):
        n = draw(st.integers(0, N))
        start = 0 if draw(st.booleans()) else N - n
        idx = torch.arange(start, start + n)
        block = torch.ones(n, n, dtype=torch.bool)
        keep[b, 0, idx[:, None], idx[None, :]] = block.tril() if causal else block
        real.append(idx)
    return keep, real, causal


@settings(max_examples=examples(40))
@given(case=padded(), method=st.sampled_from(METHODS), form=st.sampled_from(["bool", "float"]),
       seed=st.integers(0, 2**32 - 1))
def test_padding_masks_give_each_sequence_alone(case, method, form, seed):
    keep, real, causal = case
    B, N = keep.shape[0], keep.shape[-1]
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, 4, N, 8, generator=g, dtype=torch.float64)
    k, v = torch.randn(B, 2, N, 8, generator=g, dtype=torch.float64), torch.randn(
        B, 2, N, 8, generator=g, dtype=torch.float64)
    mask = keep if form == "bool" else torch.zeros(keep.shape, dtype=torch.float64).masked_fill(
        ~keep, torch.finfo(torch.float64).min)
    patch = kst.LayerPatch(method, seed=seed % 1000)
    fn = transformers.AttentionInterface._global_mapping[f"kernelsketch-{method}"]
    layer = Layer(causal)
    layer.kernelsketch_patch = patch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = call_or_clear_error(lambda: fn(layer, q, k, v, mask, scaling=0.3)[0],
                                  ("attention_mask", "method"))
        if out is None:  # non-causal masks for a causal-only method, or rows none can see
            assert method != "exact"
            return
        out = out.transpose(1, 2)
        assert_finite("out", out)
        for b, idx in enumerate(real):
            if len(idx) == 0:
                continue
            generator = torch.Generator().manual_seed(patch.seed)
            alone = ks.attention(q[b:b + 1, :, idx], k[b:b + 1, :, idx], v[b:b + 1, :, idx],
                                 method=method, config=patch.config, scale=0.3,
                                 is_causal=causal and len(idx) > 1, generator=generator)
            torch.testing.assert_close(out[b:b + 1, :, idx], alone, rtol=1e-9, atol=1e-9)


@settings(max_examples=examples(30))
@given(method=st.sampled_from(METHODS), n=st.integers(2, 12), seed=st.integers(0, 2**32 - 1))
def test_other_masks_are_honoured_by_exact_or_refused(method, n, seed):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(1, 1, n, n, generator=g) < 0.5
    keep[..., 0] = True  # every query keeps a key
    q, k = torch.randn(1, 2, n, 4, generator=g), torch.randn(1, 2, n, 4, generator=g)
    fn = transformers.AttentionInterface._global_mapping[f"kernelsketch-{method}"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = call_or_clear_error(lambda: fn(Layer(True), q, k, k, keep, scaling=0.5)[0],
                                  ("attention_mask", "method"))
    if method == "exact":
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, k, attn_mask=keep, scale=0.5)
        torch.testing.assert_close(out, ref.transpose(1, 2), rtol=1e-5, atol=1e-6)
    elif out is not None:  # the random mask happened to be a padding or causal pattern
        assert_finite("out", out)


@settings(max_examples=examples(30))
@given(method=st.one_of(st.sampled_from(METHODS), st.just("nope"), st.just(3)),
       seed=st.one_of(st.integers(-2, 10), st.sampled_from([2**63, 2**64]), st.just(1.0)),
       decode=st.sampled_from(["exact", "method", "sketch", None]))
def test_layer_patch_fields(method, seed, decode):
    patch = call_or_clear_error(lambda: kst.LayerPatch(method, seed=seed, decode=decode),
                                ("method", "seed", "decode"))
    if patch is not None:
        assert patch.config is not None and 0 <= patch.seed < 2**63
