"""Statistical assertions shared by the sketch tests."""

import math

import torch


def assert_unbiased(estimates: torch.Tensor, truth: torch.Tensor, *, z: float = 5.0,
                    max_rel_stderr: float = 0.12) -> None:
    """Assert ``mean(estimates, 0)`` is within ``z`` standard errors of ``truth``.

    ``estimates`` is [N, ...] (one row per independent sketch). The test is
    only meaningful if it has power, so the standard error must also be below
    ``max_rel_stderr * |truth|``: a bias larger than ``z * max_rel_stderr``
    relative would be caught.
    """
    n = estimates.shape[0]
    mean = estimates.mean(0)
    stderr = estimates.std(0) / math.sqrt(n)
    assert (stderr <= max_rel_stderr * truth.abs()).all(), (stderr, truth)
    assert ((mean - truth).abs() <= z * stderr + 1e-9).all(), (mean, truth, stderr)


def correlated_pair(d: int, batch: int, rho: float, generator: torch.Generator):
    """Unit vectors x, y [batch, d] (float64) with <x, y> close to ``rho``."""
    x = torch.randn(batch, d, dtype=torch.float64, generator=generator)
    noise = torch.randn(batch, d, dtype=torch.float64, generator=generator)
    x = x / x.norm(dim=-1, keepdim=True)
    noise = noise - (noise * x).sum(-1, keepdim=True) * x
    noise = noise / noise.norm(dim=-1, keepdim=True)
    y = rho * x + math.sqrt(1 - rho**2) * noise
    return x, y
