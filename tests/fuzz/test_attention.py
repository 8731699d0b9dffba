"""Fuzz: kernelsketch.attention with every registered method, valid and broken inputs.

Valid inputs (shapes, GQA, cross-attention, dtypes, magnitudes from 1e-20 to 1e25,
scales from 1e-30 to 1e30, degenerate keys) give finite output of q's dtype and
shape, each row within the range of the values (softmax and polynomial weights
are non-negative), an exact float64 result for the exact methods, and leave the
inputs untouched. Broken inputs raise TypeError/ValueError naming the argument.
"""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernelsketch as ks
from kernelsketch.attn import get_method

from ..attn.reference import naive_attention
from .contract import (
    assert_finite,
    assert_unchanged,
    assert_within_values,
    call_or_clear_error,
    examples,
    snapshot,
)

pytestmark = pytest.mark.timeout(300)

METHODS = ks.available_methods()
DTYPES = [torch.float64, torch.float32, torch.bfloat16]
ARGS = ("q", "k", "v", "method", "is_causal", "scale", "config", "return_lse", "generator")


@st.composite
def qkv(draw, max_len=40):
    """q [B, Hq, N, D], k, v [B, Hkv, M, ·] drawn from a seeded generator, in one dtype."""
    B, Hkv, G = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    N = draw(st.integers(1, max_len))
    M = draw(st.one_of(st.just(N), st.integers(1, max_len)))
    D, Dv = draw(st.sampled_from([1, 3, 8, 16])), draw(st.sampled_from([1, 5, 8]))
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(["gaussian", "zero keys", "equal keys", "one large key"]))
    magnitude = 10.0 ** draw(st.integers(-20, 25))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    q = torch.randn(B, Hkv * G, N, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, M, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, M, Dv, generator=g, dtype=torch.float64) * 10.0 ** draw(
        st.integers(-6, 6))
    if kind == "zero keys":
        k = torch.zeros_like(k)
    elif kind == "equal keys":
        k = k[:, :, :1].expand_as(k).clone()
    elif kind == "one large key":
        k[:, :, draw(st.integers(0, M - 1))] *= 1e3
    return (q * magnitude).to(dtype), (k * magnitude).to(dtype), v.to(dtype)


def scales():
    return st.one_of(st.none(), st.sampled_from([1e-30, 1e-6, 0.1, 1.0, 10.0, 1e10, 1e30]))


def run(q, k, v, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExactFallbackWarning is not an error
        return ks.attention(q, k, v, **kwargs)


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=examples(20))
@given(inputs=qkv(), is_causal=st.booleans(), scale=scales(), seed=st.integers(0, 2**32 - 1))
def test_valid_inputs_give_finite_output_within_the_values(method, inputs, is_causal, scale,
                                                           seed):
    q, k, v = inputs
    before = snapshot(q, k, v)
    generator = torch.Generator().manual_seed(seed)
    result = call_or_clear_error(
        lambda: run(q, k, v, method=method, is_causal=is_causal, scale=scale, return_lse=True,
                    generator=generator), ARGS)
    assert_unchanged(before, q, k, v)
    if result is None:  # only the softmax logit range may be refused
        s = q.shape[-1] ** -0.5 if scale is None else scale
        bound = max(s, 1) * q.shape[-1] * q.double().abs().max() * k.double().abs().max()
        assert get_method(method).reference == "exact" or method == "exact"
        assert bound > 1e30, "a clear error, but on inputs the method should take"
        assert q.dtype != torch.float64
        return
    out, lse = result
    assert out.shape == (*q.shape[:3], v.shape[-1]) and out.dtype == q.dtype
    assert lse.shape == q.shape[:3]
    assert_finite("out", out)
    assert_finite("lse", lse, allow_neg_inf=True)  # rows that see no key
    polynomial = method in ("polynomial", "polysketch")
    assert_within_values(out, v, with_zero=polynomial or is_causal)


@settings(max_examples=examples(25))
@given(inputs=qkv(max_len=24), is_causal=st.booleans(), scale=scales())
def test_exact_method_equals_the_float64_oracle(inputs, is_causal, scale):
    q, k, v = inputs
    out = call_or_clear_error(lambda: run(q, k, v, is_causal=is_causal, scale=scale), ARGS)
    if out is None:
        return
    ref = naive_attention(q, k, v, is_causal=is_causal, scale=scale)
    tol = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 3e-2}[q.dtype]
    span = float(v.double().abs().max())
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=tol * (span + 1e-300))


def broken(draw, q, k, v):
    """One argument broken: (kwargs for attention, the argument's name)."""
    kwargs = {"q": q, "k": k, "v": v}
    what = draw(st.sampled_from([
        "rank", "batch", "heads", "keys", "head dim", "dtype", "int", "nan", "inf", "empty",
        "not a tensor", "scale", "method", "config", "generator", "is_causal", "meta"]))
    name = {"scale": "scale", "method": "method", "config": "config", "generator": "generator",
            "is_causal": "is_causal"}.get(what, draw(st.sampled_from(["q", "k", "v"])))
    t = kwargs.get(name)
    if what == "rank":
        kwargs[name] = t[0] if draw(st.booleans()) else t[None]
    elif what == "batch":
        kwargs[name] = torch.cat((t, t), 0)
    elif what == "heads":
        name = "v" if name == "q" else name  # q with other heads can be GQA
        kwargs[name] = torch.cat((kwargs[name],) * 3, 1)
    elif what == "keys":
        name = "v"
        kwargs["v"] = torch.cat((v, v), 2)
    elif what == "head dim":
        name = "k"
        kwargs["k"] = torch.cat((k, k), 3)
    elif what == "dtype":
        kwargs[name] = t.to(torch.float16 if t.dtype != torch.float16 else torch.float32)
    elif what == "int":
        kwargs[name] = t.long()
    elif what in ("nan", "inf"):
        t = t.clone()
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = float(what)
        kwargs[name] = t
    elif what == "empty":
        kwargs[name] = t[:, :, :0]
    elif what == "not a tensor":
        kwargs[name] = t.tolist()
    elif what == "meta":
        kwargs[name] = t.to("meta")
    elif what == "scale":
        kwargs["scale"] = draw(st.sampled_from([0.0, -1.0, math.nan, math.inf, "0.1", True]))
    elif what == "method":
        kwargs["method"] = draw(st.sampled_from(["nope", "", 3, None]))
    elif what == "config":
        kwargs["method"] = draw(st.sampled_from(METHODS))
        others = [get_method(m).config_cls for m in METHODS
                  if get_method(m).config_cls is not get_method(kwargs["method"]).config_cls]
        kwargs["config"] = draw(st.sampled_from([*(c() for c in others), "fast", 3]))
    elif what == "generator":
        kwargs["generator"] = draw(st.sampled_from([0, "g", 1.5]))
    elif what == "is_causal":
        kwargs["is_causal"] = draw(st.sampled_from([1, "yes", None]))
    return kwargs, name


@settings(max_examples=examples(60))
@given(data=st.data(), inputs=qkv(max_len=12), method=st.sampled_from(METHODS))
def test_broken_arguments_raise_naming_the_argument(data, inputs, method):
    q, k, v = inputs
    kwargs, name = broken(data.draw, q, k, v)
    kwargs.setdefault("method", method)
    before = snapshot(q, k, v)
    with pytest.raises((TypeError, ValueError)) as info:
        run(**kwargs)
    assert name in str(info.value), f"{name} not named in: {info.value}"
    assert_unchanged(before, q, k, v)
