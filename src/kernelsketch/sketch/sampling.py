"""Random generators and index sampling with unbiased re-weighting.

Torch functions draw from ``generator=``; modules that own fixed randomness take
``seed=`` or ``generator=``, which :func:`resolve_generator` turns into one
generator (docs/conventions.md).

The samplers return ``(indices, weights)`` such that, for any function ``f``
on ``{0, ..., n-1}``, ``sum_j weights[j] * f(indices[j])`` is an unbiased
estimate of ``sum_i f(i)``. This is the estimator used for sampled keys in
attention (HyperAttention's uniform keys, KDEformer's importance-sampled
values) and for leverage-score sampling of features. Theory: docs/sketches.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from kernelsketch._checks import (
    FLOAT_DTYPES,
    check_allocation,
    check_generator,
    check_int,
    check_tensor,
)

__all__ = ["importance_sample", "resolve_generator", "uniform_sample"]


def resolve_generator(
    seed: int | None = None, generator: torch.Generator | None = None
) -> torch.Generator | None:
    """Turn the ``seed`` / ``generator`` keyword pair into one generator.

    Parameters
    ----------
    seed : int or None
        Non-negative seed; a fresh CPU generator seeded with it is returned.
    generator : torch.Generator or None
        Returned as is (its state advances as it is used).

    Returns
    -------
    torch.Generator or None
        ``None`` when both are ``None``: draws then use torch's global
        generator, so ``torch.manual_seed`` makes them reproducible.

    Raises
    ------
    ValueError
        If both ``seed`` and ``generator`` are given.
    """
    check_generator(generator)
    if seed is None:
        return generator
    check_int("seed", seed, min=0, max=2**64 - 1)  # torch.Generator.manual_seed's range
    if generator is not None:
        raise ValueError("give either seed or generator, not both; got seed="
                         f"{seed} and a torch.Generator")
    return torch.Generator().manual_seed(seed)


def generator_device(generator: torch.Generator | None) -> torch.device:
    """Device on which draws from ``generator`` are made (CPU for ``None``)."""
    return torch.device("cpu") if generator is None else generator.device


def importance_sample(
    probs: torch.Tensor,
    num_samples: int,
    *,
    generator: torch.Generator | None = None,
    replacement: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample indices with probability proportional to ``probs``, with unbiased weights.

    Parameters
    ----------
    probs : Tensor [..., n], float
        Non-negative sampling weights (need not sum to one); every row must
        have a positive entry. Leading dimensions are independent batches.
    num_samples : int
        Number ``m`` of samples per row. Without replacement, ``m <= n``.
    generator : torch.Generator, optional
        On ``probs``' device.
    replacement : bool, default True
        ``True``: i.i.d. draws with ``p_i = probs_i / sum(probs)`` and weights
        ``1 / (m p_i)``. ``False``: priority sampling (Duffield, Lund, Thorup):
        priorities ``p_i / u_i`` with ``u_i ~ U(0, 1]``, the ``m`` largest are
        kept and weighted ``max(1, tau / p_i)`` where ``tau`` is the
        ``(m+1)``-th largest priority (weight 1 for all when ``m = n``).
        Both give ``E[sum_j w_j f(idx_j)] = sum_i f(i)`` for every ``f``
        supported on ``probs > 0``.

    Returns
    -------
    indices : Tensor [..., m], int64
    weights : Tensor [..., m], dtype of ``probs`` (float32 for half types)

    References
    ----------
    Duffield, Lund, Thorup. Priority sampling for estimation of arbitrary
    subset sums. J. ACM 54(6), 2007.
    """
    check_tensor("probs", probs, dtypes=FLOAT_DTYPES)
    if probs.dim() == 0:
        raise ValueError("probs must have shape [..., n], got a 0-dimensional tensor")
    check_int("num_samples", num_samples, min=1)
    check_generator(generator, probs.device)
    n = probs.shape[-1]
    if not replacement and num_samples > n:
        raise ValueError(
            f"num_samples must be <= n={n} when replacement=False, got {num_samples}"
        )
    rows = probs.numel() // max(n, 1)
    check_allocation(16.0 * rows * num_samples,
                     f"the [{rows}, num_samples={num_samples}] indices and weights")
    if (probs < 0).any():
        raise ValueError("probs must be non-negative, found negative entries")
    work = probs.float() if probs.dtype in (torch.float16, torch.bfloat16) else probs
    flat = work.reshape(-1, n)
    total = flat.sum(-1, keepdim=True)
    if (total <= 0).any():
        raise ValueError("probs must have a positive entry in every row, found an all-zero row")
    p = flat / total
    if replacement:
        idx = torch.multinomial(p, num_samples, replacement=True, generator=generator)
        weights = 1.0 / (num_samples * p.gather(-1, idx))
    else:
        u = 1.0 - torch.rand(p.shape, dtype=p.dtype, device=p.device, generator=generator)
        priority = torch.where(p > 0, p / u, torch.zeros_like(p))
        k = min(num_samples + 1, n)
        top, order = priority.topk(k, dim=-1)
        idx = order[..., :num_samples]
        if num_samples == n:
            weights = torch.ones(idx.shape, dtype=p.dtype, device=p.device)
        else:
            tau = top[..., num_samples:]
            p_idx = p.gather(-1, idx)
            # Zero-probability items are only kept when fewer than m items have
            # p > 0; they then carry weight 0 (f is estimated on p > 0 only).
            weights = torch.where(
                p_idx > 0, torch.clamp(tau / p_idx.clamp_min(torch.finfo(p.dtype).tiny), min=1.0), 0.0
            )
    lead = probs.shape[:-1]
    return idx.reshape(*lead, num_samples), weights.reshape(*lead, num_samples)


def uniform_sample(
    n: int,
    num_samples: int,
    *,
    batch_shape: Sequence[int] = (),
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    replacement: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample indices uniformly from ``{0, ..., n-1}`` with weights ``n / num_samples``.

    Parameters
    ----------
    n : int
        Population size.
    num_samples : int
        Samples per batch entry; ``<= n`` without replacement.
    batch_shape : sequence of int
        Independent draws for every entry of this shape.
    device : torch.device or str, optional
        Device of the outputs (default: the generator's device, else CPU).
    generator : torch.Generator, optional
    replacement : bool, default True
        Without replacement each index appears at most once (a uniformly
        random subset, via the top-``m`` of i.i.d. uniform keys).
    dtype : torch.dtype, default float32
        Dtype of ``weights``.

    Returns
    -------
    indices : Tensor [*batch_shape, num_samples], int64
    weights : Tensor [*batch_shape, num_samples], all equal to ``n / num_samples``
        so that ``sum_j w_j f(idx_j)`` is unbiased for ``sum_i f(i)``.
    """
    check_int("n", n, min=1)
    check_int("num_samples", num_samples, min=1)
    batch_shape = tuple(batch_shape)
    for s in batch_shape:
        check_int("batch_shape entries", s, min=1)
    if device is None:
        device = generator_device(generator)
    device = torch.device(device)
    check_generator(generator, device)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    shape = batch_shape + (num_samples,)
    rows = math.prod(batch_shape)
    check_allocation(16.0 * rows * (num_samples if replacement else n + num_samples),
                     f"{'the' if replacement else 'the keys and'} [{rows}, num_samples="
                     f"{num_samples}] indices and weights for n={n}")
    if replacement:
        idx = torch.randint(n, shape, device=device, generator=generator)
    else:
        if num_samples > n:
            raise ValueError(
                f"num_samples must be <= n={n} when replacement=False, got {num_samples}"
            )
        keys = torch.rand(batch_shape + (n,), device=device, generator=generator)
        idx = keys.topk(num_samples, dim=-1).indices
    weights = torch.full(shape, n / num_samples, dtype=dtype, device=device)
    return idx, weights
