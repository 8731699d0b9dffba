"""HyperAttention through one fused kernel call (:mod:`..common.sortlsh.estimate`): the
sortLSH Triton kernels (CUDA half precision, or float32 where torch allows TF32 matmuls;
``TRITON_INTERPRET=1`` in tests) or SDPA's CPU flash kernel (CPU)."""

from __future__ import annotations

import torch

from ..common.sortlsh.estimate import sortlsh_estimate
from .config import HyperConfig
from .naive import draw_samples


def hyper_noncausal_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    config: HyperConfig,
    generator: torch.Generator | None,
    exact_first: int = 0,
    exact_last: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`.naive.hyper_noncausal` (one hash round) through one fused kernel call:
    :func:`~kernelsketch.attn.common.sortlsh.estimate.sortlsh_estimate` with the paper's
    uniform (or value-norm) sample, drawn as the torch path draws it (same estimate for
    the same generator state)."""
    def draw(k_rest, v_rest, k_exact, blk_q, blk_k, num_blocks):
        return draw_samples(k_rest, v_rest, config, generator) if num_blocks > 1 else None

    return sortlsh_estimate(q, k, v, scale, config, generator, exact_first, exact_last, draw)
