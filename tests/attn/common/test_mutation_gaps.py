"""Shared attention helpers' behaviour the mutation runs left untested (issue 22).

Each test names the surviving mutants it kills (tools/mutation.py, targets attn.metrics,
attn.causal and attn.sortlsh).
"""

import warnings

import pytest
import torch

from kernelsketch.attn.common.causal import approximate_or_exact, causal_attention
from kernelsketch.attn.common.exact import ExactFallbackWarning, NoSpeedupWarning, exact_lse
from kernelsketch.attn.common.metrics import relative_error
from kernelsketch.attn.common.sortlsh.blocks import lsh_buckets
from kernelsketch.sketch.lsh import AngularLSH


def test_relative_error_against_an_all_zero_exact_output():
    # Kills the 5 mutants of relative_error's zero branch (full attn.metrics run at b8ee4e7:
    # `s == 1`, `* 1e-300`, `/ 1.0`, float(None), _frobenius(None)): for exact = 0 the error
    # is ‖approx‖_F against a norm of 1e-300, finite, never a division by zero.
    zero = torch.zeros(2, 3, 4, dtype=torch.float64)
    assert relative_error(zero, zero) == 0.0
    approx = zero.clone()
    approx[0, 1, 2], approx[1, 0, 3] = 3e-301, -4e-301  # ‖approx‖_F = 5e-301
    assert abs(relative_error(approx, zero) - 0.5) < 1e-12
    approx[0, 0, 0] = 1.0  # ‖approx‖_F ~ 1: the ratio is 1e300, still finite
    assert abs(relative_error(approx, zero) / 1e300 - 1.0) < 1e-12
    # An exact output whose largest entry is 1 takes the usual ratio (not the zero branch).
    one = zero.clone()
    one[0, 0, 0] = 1.0
    assert abs(relative_error(2 * one, one) - 1.0) < 1e-12


# -- attn/common/causal.py (full attn.causal run at f7f3c9a) -------------------------------


def _qkv64(seed, B=1, H=2, N=64, M=64, D=8):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, n, D, generator=g, dtype=torch.float64)
                 for n in (N, M, M))


def _naive_causal(q, k, v, scale):
    q, k, v = q.double(), k.double(), v.double()
    N, M = q.shape[2], k.shape[2]
    s = (q @ k.transpose(-1, -2) * scale).masked_fill(
        ~torch.ones(N, M, dtype=torch.bool).tril(M - N), float("-inf"))
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


def _exact_approximator(q, k, v, s):
    return exact_lse(q, k, v, scale=s)


def test_causal_recursion_float32_gradients_through_the_flash_leaves(seed):
    # _merge_levels accumulates in place only without autograd: the leaves' out is SDPA's
    # flash output, which its backward saved. Mutants `grad = None`, `... if (grad) and
    # False` (in place always) modify it: autograd raises at backward. The float32
    # gradients match the float64 oracle's (relative 1e-4; measured below 1e-6).
    q, k, v = (t.float().requires_grad_(True) for t in _qkv64(seed))
    out, lse = causal_attention(q, k, v, scale=0.35, approximate=_exact_approximator,
                                min_seq_len=8)
    g = torch.Generator().manual_seed(seed + 1)
    w1, w2 = torch.randn(out.shape, generator=g), torch.randn(lse.shape, generator=g)
    grads = torch.autograd.grad((out * w1).sum() + (lse * w2).sum(), (q, k, v))
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref, ref_lse = _naive_causal(q64, k64, v64, 0.35)
    refs = torch.autograd.grad((ref * w1.double()).sum() + (ref_lse * w2.double()).sum(),
                               (q64, k64, v64))
    for a, b in zip(grads, refs):
        assert float((a.double() - b).norm() / b.norm()) < 1e-4


def test_causal_recursion_shifts_by_the_largest_lse_of_every_level(seed):
    # The merge's shift m must be the maximum over the leaves AND every level's lse
    # (mutants: torch.maximum(..., out=None) or without out= leave m at the leaves' lse,
    # and e^{lse_part - m} overflows). Queries in the second half see earlier keys with
    # logits ~1e3 above their own leaf's: the output is still exact attention.
    q, k, v = _qkv64(seed, N=32, M=32)
    u = torch.zeros(8, dtype=torch.float64)
    u[0] = 30.0
    q[:, :, 16:] = u + 0.1 * q[:, :, 16:]  # the later queries and the first keys share u:
    k[:, :, :16] = u + 0.1 * k[:, :, :16]  # logits ~900, their own leaves' ~±30
    out, lse = causal_attention(q, k, v, scale=1.0, approximate=_exact_approximator,
                                min_seq_len=4)
    ref, ref_lse = _naive_causal(q, k, v, 1.0)
    assert float(ref_lse[:, :, 16:].min()) > 750  # e^{lse_part - leaf lse} beyond float64
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-12, atol=1e-10)


def test_non_causal_dispatch_passes_the_sink_and_no_window(seed):
    # approximate_or_exact hands a non-causal call (sink, 0) to its approximator (mutant:
    # exact_last=1, the last key then exact instead of estimated).
    q, k, v = _qkv64(seed)
    seen = []

    def noncausal(qb, kb, vb, s, first, last):
        seen.append((first, last))
        return exact_lse(qb, kb, vb, scale=s)

    approximate_or_exact(q, k, v, is_causal=False, scale=0.3, min_seq_len=0,
                         noncausal=noncausal, need_lse=True, sink=3, window=5, method="kde")
    assert seen == [(3, 0)]


def test_speed_and_fallback_warnings_name_the_method_and_the_boundary(seed):
    # A causal sketch on CPU below `cpu_causal_break_even` queries warns (NoSpeedupWarning),
    # at and above it not; a fallback to exact warns (ExactFallbackWarning); both name the
    # method and the reason (mutants: `or`, `!= "cpu"`, "CPU", `<=`, None for either).
    q, k, v = _qkv64(seed, N=32, M=32)

    def noncausal(qb, kb, vb, s, first, last):
        return exact_lse(qb, kb, vb, scale=s)

    def run(n, break_even, min_seq_len=4):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            approximate_or_exact(q[:, :, :n], k[:, :, :n], v[:, :, :n], is_causal=True,
                                 scale=0.3, min_seq_len=min_seq_len, noncausal=noncausal,
                                 need_lse=True, method="kde", cpu_causal_break_even=break_even)
        return [(r.category, str(r.message)) for r in record]

    below = run(31, 32)
    assert below == [(NoSpeedupWarning, ("method='kde' runs its sketch causal on CPU below 32 "
                      "queries, where it was measured slower than exact attention "
                      "(BENCHMARKS.md); method='exact' is faster there"))]
    assert run(32, 32) == [] and run(32, 8) == []
    fallback = run(32, 0, min_seq_len=64)
    assert fallback == [(ExactFallbackWarning, ("method='kde' computed exact attention, not its "
                         "sketch: min_seq_len=64 covers every block of the causal recursion"))]


# -- attn/common/sortlsh/blocks.py (full attn.sortlsh run at f7f3c9a) ---------------------


@pytest.mark.parametrize("n_bits", [3, 16, 17, 20])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_lsh_buckets_equal_the_lsh_call(n_bits, dtype, seed):
    # lsh_buckets is AngularLSH.__call__ without re-validation, through a float32 code and a
    # cached Gray table up to 16 bits, the int64 sum above. Mutants: the > 16 branch's sum
    # (None, axis, `/`), x not cast to the sketch's compute dtype (bfloat16 planes flip
    # signs of small products), `>= 0` for `> 0` (a zero row's bits).
    g = torch.Generator().manual_seed(seed)
    lsh = AngularLSH(8, n_bits, generator=g)
    x = torch.randn(2, 3, 700, 8, generator=g, dtype=torch.float64)
    x[0, 0, 0] = 0.0  # every product exactly 0: bit 0 under `> 0`
    x = x.to(dtype)
    got = lsh_buckets(lsh, x, x.new_zeros(1, 8))  # uncentred: the bucket arithmetic alone
    assert got.dtype == torch.int64 and got.shape == (2, 3, 700)
    assert torch.equal(got, lsh(x))
    assert int(got[0, 0, 0]) == 0  # the all-zero sign code's Gray inverse
