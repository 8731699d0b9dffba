"""KDEformer through one fused kernel call (:mod:`..common.sortlsh.estimate`): the
sortLSH Triton kernels (CUDA half precision, or float32 where torch allows TF32 matmuls;
``TRITON_INTERPRET=1`` in tests) or SDPA's CPU flash kernel (CPU)."""

from __future__ import annotations

import torch

from ..common.sortlsh.estimate import sortlsh_estimate
from .config import KDEConfig
from .naive import draw_samples, samples_needed


def kde_noncausal_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    config: KDEConfig,
    generator: torch.Generator | None,
    exact_first: int = 0,
    exact_last: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`.naive.kde_noncausal` through one fused kernel call:
    :func:`~kernelsketch.attn.common.sortlsh.estimate.sortlsh_estimate` with the AMM
    sample, drawn as the torch path draws it (the density estimates need only the logits
    of their sampled rows; same estimate for the same generator state)."""
    def draw(k_rest, v_rest, k_exact, blk_q, blk_k, num_blocks):
        if not samples_needed(config, num_blocks):
            return None
        return draw_samples(q, k_rest, v_rest, [(blk_q, blk_k)], scale, config, generator,
                            k_exact)

    return sortlsh_estimate(q, k, v, scale, config, generator, exact_first, exact_last, draw)
