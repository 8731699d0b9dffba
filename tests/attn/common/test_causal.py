import pytest
import torch

from kernelsketch.attn.common.causal import (
    approximate_or_exact,
    causal_attention,
    causal_levels,
    recursion_is_exact,
)
from kernelsketch.attn.common.exact import exact_partial

from ..reference import naive_attention, random_qkv


def exact_approximator(q, k, v, scale):
    return exact_partial(q, k, v, scale=scale)


@pytest.mark.parametrize("N,M", [(64, 64), (37, 37), (100, 100), (30, 51), (51, 30), (9, 9)])
@pytest.mark.parametrize("min_seq_len", [1, 4, 16])
def test_recursion_with_exact_approximator_equals_exact_causal(N, M, min_seq_len):
    q, k, v = random_qkv(2, 4, 2, N, M, 8, Dv=6)
    out, lse = causal_attention(q, k, v, scale=0.3, approximate=exact_approximator,
                                min_seq_len=min_seq_len)
    ref, ref_lse = naive_attention(q, k, v, scale=0.3, is_causal=True, return_lse=True)
    torch.testing.assert_close(out, ref)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(finite, torch.isfinite(lse))
    torch.testing.assert_close(lse[finite], ref_lse[finite])


def test_each_level_calls_the_approximator_once_with_batched_blocks():
    calls = []

    def recording(q, k, v, scale):
        calls.append((q.shape, k.shape))
        return exact_partial(q, k, v, scale=scale)

    q, k, v = random_qkv(1, 2, 2, 64, 64, 8)
    causal_attention(q, k, v, scale=0.3, approximate=recording, min_seq_len=8)
    levels, leaf = causal_levels(64, 8)
    assert (levels, leaf) == (3, 8)
    # level 2: 2 blocks of 16, level 1: 1 of 32 -- batch dim carries the blocks; level 3's
    # 4 blocks of 8 <= min_seq_len keys are exact, in the leaves' exact causal call
    assert [(s[0][0], s[0][2], s[1][2]) for s in calls] == [(2, 16, 16), (1, 32, 32)]


def test_approximator_never_sees_future_keys():
    def checking(q, k, v, scale):
        assert q.shape[2] <= k.shape[2] + 1  # off-diagonal halves
        return exact_partial(q, k, v, scale=scale)

    q, k, v = random_qkv(1, 1, 1, 40, 40, 8)
    out, _ = causal_attention(q, k, v, scale=0.3, approximate=checking, min_seq_len=5)
    v2 = v.clone()
    v2[:, :, 30:] += 100.0
    k2 = k.clone()
    k2[:, :, 30:] *= -3
    out2, _ = causal_attention(q, k2, v2, scale=0.3, approximate=checking, min_seq_len=5)
    torch.testing.assert_close(out[:, :, :30], out2[:, :, :30])


def test_gradients_flow_through_recursion():
    q, k, v = random_qkv(1, 2, 1, 33, 33, 8, requires_grad=True)
    out, lse = causal_attention(q, k, v, scale=0.3, approximate=exact_approximator, min_seq_len=4)
    g = torch.autograd.grad(out.sum() + lse.sum(), (q, k, v))
    ref, ref_lse = naive_attention(q, k, v, scale=0.3, is_causal=True, return_lse=True)
    g_ref = torch.autograd.grad(ref.sum() + ref_lse.sum(), (q, k, v))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("N,M", [(64, 64), (65, 65), (40, 64), (64, 40), (80, 64)])
@pytest.mark.parametrize("min_seq_len", [16, 32, 40])
def test_recursion_is_exact_matches_what_the_recursion_does(N, M, min_seq_len):
    """The shortcut predicate agrees with whether the recursion ever calls the approximator."""
    calls = []

    def recording(q, k, v, scale):
        calls.append(k.shape[2])
        return exact_partial(q, k, v, scale=scale)

    def only_when_long(q, k, v, scale):
        if k.shape[2] <= min_seq_len:
            return exact_partial(q, k, v, scale=scale)
        return recording(q, k, v, scale)

    q, k, v = random_qkv(1, 1, 1, N, M, 8)
    causal_attention(q, k, v, scale=0.3, approximate=only_when_long, min_seq_len=min_seq_len)
    assert recursion_is_exact(N, M, min_seq_len) == (not calls)


def test_dispatch_takes_the_exact_path_when_every_block_is_exact():
    def never(q, k, v, scale, exact_first, exact_last):
        raise AssertionError("the approximator must not run")

    q, k, v = random_qkv(1, 2, 2, 64, 64, 8)
    out, lse = approximate_or_exact(q, k, v, is_causal=True, scale=0.3, min_seq_len=32,
                                    noncausal=never, need_lse=True)
    ref, ref_lse = naive_attention(q, k, v, scale=0.3, is_causal=True, return_lse=True)
    torch.testing.assert_close(out.to(ref.dtype), ref)
    torch.testing.assert_close(lse.to(ref_lse.dtype), ref_lse)
    with pytest.raises(AssertionError, match="must not run"):
        approximate_or_exact(q, k, v, is_causal=True, scale=0.3, min_seq_len=31,
                             noncausal=never, need_lse=True)
