"""Statistical assertions shared by the sketch tests."""

import math

import torch
from scipy import stats


def assert_unbiased(estimates: torch.Tensor, truth: torch.Tensor, *, fail_prob: float = 1e-6,
                    max_rel_stderr: float = 0.12, measure=None) -> float:
    """Assert ``mean(estimates, 0)`` is within ``z`` standard errors of ``truth``; return the
    largest ``|mean - truth| / stderr`` (for ``measure``).

    ``estimates`` is [N, ...] (one row per independent sketch). ``z`` is Bonferroni-corrected
    over the ``k`` entries checked at once: the two-sided Student-t (N - 1 dof) quantile at
    ``fail_prob / k``, so an unbiased estimator fails with probability < ``fail_prob`` per
    call (the t approximation of the mean's distribution assumed; heavy-tailed estimates can
    exceed it, so callers measure the returned statistic over seed offsets). The test is
    only meaningful if it has power, so the standard error must also be below
    ``max_rel_stderr * |truth|``: a bias larger than ``z * max_rel_stderr`` relative would
    be caught. ``measure`` (the tests' fixture), if given, records the largest
    ``stderr / |truth|`` as ``rel_stderr`` (random too: its bound is set from measurements).
    """
    n = estimates.shape[0]
    k = truth.numel()
    z = float(stats.t.isf(fail_prob / (2 * k), df=n - 1))
    mean = estimates.mean(0)
    stderr = estimates.std(0) / math.sqrt(n)
    if measure is not None:
        measure("rel_stderr", (stderr / truth.abs()).max())
    assert (stderr <= max_rel_stderr * truth.abs()).all(), (stderr, truth)
    dev = (mean - truth).abs()
    assert (dev <= z * stderr + 1e-9).all(), (mean, truth, stderr, z)
    return float((dev / stderr.clamp_min(1e-300)).max())


def correlated_pair(d: int, batch: int, rho: float, generator: torch.Generator):
    """Unit vectors x, y [batch, d] (float64) with <x, y> close to ``rho``."""
    x = torch.randn(batch, d, dtype=torch.float64, generator=generator)
    noise = torch.randn(batch, d, dtype=torch.float64, generator=generator)
    x = x / x.norm(dim=-1, keepdim=True)
    noise = noise - (noise * x).sum(-1, keepdim=True) * x
    noise = noise / noise.norm(dim=-1, keepdim=True)
    y = rho * x + math.sqrt(1 - rho**2) * noise
    return x, y
