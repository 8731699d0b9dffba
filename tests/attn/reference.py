"""The naive float64 oracle that every attention test compares against, and its inputs."""

import os
from collections import Counter

import torch

from tests.seeding import derive_seed, seed_offset

_DRAWS: Counter = Counter()  # input_stream calls so far, per test and name


def seeded_generator(*keys, device="cpu") -> torch.Generator:
    """A generator seeded from the running test as the ``seed`` fixture is (its node id,
    shifted by ``KS_TEST_SEED_OFFSET`` or ``--seed-repeats``), and from ``keys``."""
    from tests.conftest import _base_nodeid

    running = os.environ.get("PYTEST_CURRENT_TEST", "outside a test").rsplit(" (", 1)[0]
    nodeid, repeat = _base_nodeid(running)
    offset = seed_offset() if repeat is None else repeat
    base = derive_seed(nodeid) if offset == 0 else derive_seed(nodeid, offset)
    return torch.Generator(device=device).manual_seed(derive_seed(base, *keys))


def input_stream(name: str, device="cpu") -> torch.Generator:
    """A new seeded stream at each call in the running test: ``seeded_generator(name, i)``
    for the i-th call with this name (helpers that draw inputs without a generator)."""
    key = (os.environ.get("PYTEST_CURRENT_TEST", ""), name)
    _DRAWS[key] += 1
    return seeded_generator(name, _DRAWS[key], device=device)


def naive_attention(q, k, v, *, scale=None, is_causal=False, return_lse=False):
    """softmax(q kᵀ scale) v in float64, GQA by repetition, causal bottom-right, materialised."""
    q, k, v = q.double(), k.double(), v.double()
    Hq, Hkv = q.shape[1], k.shape[1]
    k = k.repeat_interleave(Hq // Hkv, dim=1)
    v = v.repeat_interleave(Hq // Hkv, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = q @ k.transpose(-1, -2) * scale
    N, M = s.shape[-2:]
    if is_causal:
        keep = torch.ones(N, M, dtype=torch.bool, device=q.device).tril(M - N)
        s = s.masked_fill(~keep, float("-inf"))
    p = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)
    out = p @ v
    if return_lse:
        return out, torch.logsumexp(s, dim=-1)
    return out


def random_qkv(B=2, Hq=4, Hkv=2, N=64, M=None, D=16, Dv=None, dtype=torch.float64, scale=1.0,
               device="cpu", requires_grad=False, generator=None):
    """Random inputs in SDPA layout, drawn from ``generator`` (the test's; see
    tests/conftest.py); without one from :func:`input_stream`, a new seeded stream for each
    call in the running test (never from torch's global generator)."""
    M = N if M is None else M
    Dv = D if Dv is None else Dv
    if generator is None:
        generator = input_stream("random_qkv", device=device)
    g = {"generator": generator, "device": device}
    q = (torch.randn(B, Hq, N, D, **g) * scale).to(dtype)
    k = (torch.randn(B, Hkv, M, D, **g) * scale).to(dtype)
    v = torch.randn(B, Hkv, M, Dv, **g).to(dtype)
    if requires_grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    return q, k, v


def randn_like(x, generator):
    """``torch.randn_like(x)`` drawn from ``generator``."""
    return torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)


# Bound on the largest z = |mean − truth| / sem over the 128 rows of causal_normaliser_draws
# with 400 trials (test_exact_keys.py, test_centred_hashing.py). Measured over 200 seeds per
# case (tools/stat_runs.py, 8 cases): mean 2.45-2.64, sd 0.48-0.57, max 5.58; the estimates
# are skewed, so the tail is a Gumbel's (fitted by the moments): P(max z > 9.5) < 1.2e-7 per
# case.
NORMALISER_Z_MAX = 9.5


def causal_normaliser_draws(method, q, k, v, config, generator, trials):
    """Independent draws of a causal sketch's normaliser exp(lse) against the exact one.

    q, k, v [1, ·, n, ·] are repeated over ``trials`` batch entries, each of which draws
    its own sample (entries share the hash and blocks only where their inputs are equal;
    the estimate is unbiased given any hash). Returns ``(gap, sem, truth)`` [Hq, n]:
    |mean of the draws − the exact normaliser|, the draws' standard error, and the exact
    normaliser (rows the exact parts cover have sem = 0 and must match it exactly).
    """
    import kernelsketch as ks

    _, ref_lse = naive_attention(q, k, v, is_causal=True, return_lse=True)
    q, k, v = (t.expand(trials, -1, -1, -1) for t in (q, k, v))
    _, lse = ks.attention(q, k, v, method=method, config=config, is_causal=True,
                          return_lse=True, generator=generator)
    z = lse.exp()
    truth = ref_lse[0].exp()
    return (z.mean(0) - truth).abs(), z.std(0) / trials ** 0.5, truth
