"""Fuzz: every method's config with adversarial field values, and the accepted ones at work.

A config either refuses a field with TypeError/ValueError naming it, or is
accepted; an accepted config then runs on small inputs (finite output within
the values' range, or a clear error naming a field), in bounded time and memory:
sizes larger than the sequence (block_size=10**12, window=10**12, ...) must be
clamped, not allocated.
"""

import dataclasses
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernelsketch as ks
from kernelsketch.attn import get_method

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
ARGS = ("q", "k", "v", "method", "is_causal", "scale", "config", "return_lse", "generator")


def field_values():
    """Sensible and adversarial values for any config field."""
    return st.one_of(
        st.integers(-3, 300),
        st.sampled_from([10**4, 10**6, 10**9, 10**12, 2**63, 2**64]),
        st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, 0.05, 0.5, 1.0, 1.5, 1e-300]),
        st.sampled_from(["uniform", "value_norm", "gaussian", "hadamard", "learned", "softmax",
                         "power", "", "x"]),
        st.none(),
    )


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=examples(30))
@given(data=st.data(), is_causal=st.booleans(), seed=st.integers(0, 2**32 - 1),
       n=st.integers(1, 48), m=st.integers(1, 48), d=st.sampled_from([2, 8]))
def test_config_fields_are_checked_and_accepted_configs_run(method, data, is_causal, seed, n, m,
                                                            d):
    cls = get_method(method).config_cls
    fields = [f.name for f in dataclasses.fields(cls)]
    chosen = data.draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True))
    kwargs = {name: data.draw(field_values(), label=name) for name in chosen}
    config = call_or_clear_error(lambda: cls(**kwargs), chosen)
    if config is None:
        return
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 2, n, d, generator=g)
    k, v = torch.randn(1, 1, m, d, generator=g), torch.randn(1, 1, m, 3, generator=g)
    before = snapshot(q, k, v)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ks.attention(q, k, v, method=method, config=config, is_causal=is_causal,
                                generator=torch.Generator().manual_seed(seed))

    out = call_or_clear_error(run, fields + list(ARGS))
    assert_unchanged(before, q, k, v)
    if out is None:
        return
    assert out.shape == (1, 2, n, 3) and out.dtype == q.dtype
    assert_finite("out", out)
    assert_within_values(out, v, with_zero=is_causal or method in ("polynomial", "polysketch"))


@pytest.mark.parametrize("method", METHODS)
def test_replace_checks_the_fields_again(method):
    config = get_method(method).config_cls()
    field = dataclasses.fields(config)[0].name
    with pytest.raises((TypeError, ValueError), match=field):
        config.replace(**{field: "nope"})
