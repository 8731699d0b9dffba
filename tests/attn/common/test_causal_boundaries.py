"""Boundaries of the exact fallback and of the causal recursion (hyper and kde).

Found by tools/mutation.py: ``<=`` turned into ``<`` at ``min_seq_len`` and the
value prefix of causal cross-attention (M > N) sliced past the key prefix both
passed, because no test had a sequence of exactly ``min_seq_len`` keys or a
key prefix short enough to be computed exactly.
"""

import pytest
import torch

import kernelsketch as ks
from kernelsketch.attn.common.causal import (
    approximate_or_exact,
    causal_attention,
    causal_levels,
    recursion_is_exact,
)
from kernelsketch.attn.common.exact import partial_attention

from ..reference import naive_attention

# The papers' estimators (no always-exact sink or window, which would cover these short
# blocks entirely).
CONFIGS = {"hyper": ks.HyperConfig.paper().replace, "kde": ks.KDEConfig(sink=0, window=0).replace}


def qkv(seed, N, M, D=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 2, N, D, generator=g, dtype=torch.float64),
            torch.randn(1, 1, M, D, generator=g, dtype=torch.float64),
            torch.randn(1, 1, M, D, generator=g, dtype=torch.float64))


@pytest.mark.filterwarnings("ignore:method=.* computed exact attention")
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_exact_at_exactly_min_seq_len_and_approximate_one_key_beyond(method, is_causal, seed):
    cfg = CONFIGS[method](block_size=4, sample_size=4, min_seq_len=40)
    q, k, v = qkv(seed, 40, 40)
    g = torch.Generator().manual_seed(seed)
    out = ks.attention(q, k, v, method=method, config=cfg, is_causal=is_causal, generator=g)
    torch.testing.assert_close(out, naive_attention(q, k, v, is_causal=is_causal))
    cfg = CONFIGS[method](block_size=4, sample_size=4, min_seq_len=20)  # recursion / sampling
    q, k, v = qkv(seed, 41, 41)
    out = ks.attention(q, k, v, method=method, config=cfg, is_causal=is_causal, generator=g)
    assert not torch.allclose(out, naive_attention(q, k, v, is_causal=is_causal))


@pytest.mark.parametrize("method", sorted(CONFIGS))
@pytest.mark.parametrize("M", [72, 80, 81])
def test_causal_cross_attention_with_an_exact_key_prefix(method, M, seed):
    # N = 64 queries, M - N = 8, 16, 17 prefix keys against min_seq_len 16: the prefix is
    # computed exactly (8, 16) or approximately (17); every key sampled with weight 1, so
    # the result is exact either way.
    q, k, v = qkv(seed, 64, M)
    cfg = CONFIGS[method](block_size=8, sample_size=1000, min_seq_len=16)
    out = ks.attention(q, k, v, method=method, config=cfg, is_causal=True,
                       generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(out, naive_attention(q, k, v, is_causal=True))


def spy(calls):
    """An exact non-causal approximator that records the key count of every call (extra
    arguments, the exactly attended first/last key counts, are 0 here)."""

    def approximate(q, k, v, scale, *exact_first_last):
        assert not any(exact_first_last)
        assert k.shape[2] == v.shape[2]
        calls.append(k.shape[2])
        return partial_attention(q, k, v, scale=scale)

    return approximate


@pytest.mark.parametrize("N,M,blocks", [
    (64, 64, [32]), (64, 72, [32]), (64, 80, [32]), (64, 81, [17, 32]), (70, 64, [32]),
])
def test_causal_recursion_hands_the_approximator_its_blocks(N, M, blocks, seed):
    # 64 x 64 causal square, min_seq_len 16: off-diagonal blocks of 32 and 16 keys, those
    # of exactly min_seq_len (16) keys exact in the recursion itself; a key prefix (M > N)
    # is approximated only beyond min_seq_len keys (17, not 8 or 16).
    q, k, v = qkv(seed, N, M)
    want = naive_attention(q, k, v, is_causal=True)
    calls = []
    out = causal_attention(q, k, v, scale=8 ** -0.5, approximate=spy(calls), min_seq_len=16)[0]
    torch.testing.assert_close(out, want)
    assert sorted(calls) == blocks
    # Through the methods' dispatch: the same blocks.
    calls = []
    out = approximate_or_exact(q, k, v, is_causal=True, scale=8 ** -0.5, min_seq_len=16,
                               noncausal=spy(calls), need_lse=True)[0]
    torch.testing.assert_close(out, want)
    assert sorted(calls) == blocks


@pytest.mark.parametrize("n,min_seq_len,want", [
    (16, 16, (0, 16)), (17, 16, (1, 9)), (64, 16, (2, 16)), (65, 16, (3, 9)), (5, 0, (3, 1)),
    (5, 1, (3, 1)), (1, 0, (0, 1)),
])
def test_causal_levels(n, min_seq_len, want):
    # Leaves of at most max(min_seq_len, 1) rows, as few levels as that allows.
    assert causal_levels(n, min_seq_len) == want


@pytest.mark.parametrize("N,M,min_seq_len,want", [
    (32, 32, 16, True), (34, 34, 16, False), (32, 48, 16, True), (32, 49, 16, False),
    (40, 32, 16, True), (32, 33, 16, True), (20, 20, 10, True),
])
def test_recursion_is_exact(N, M, min_seq_len, want):
    # Exact iff the key prefix max(M - N, 0) and the first off-diagonal block
    # ceil(min(N, M) / 2) both have at most min_seq_len keys.
    assert recursion_is_exact(N, M, min_seq_len) is want
