"""KDEformer through the fused sortLSH Triton kernels (CUDA; ``TRITON_INTERPRET=1`` in tests)."""

from __future__ import annotations

import math

import torch

from ...sketch.lsh import AngularLSH
from ..common.gqa import fold_groups, unfold_groups
from ..common.sortlsh import sorted_blocks
from ..common.sortlsh.fused import fused_sorted_attention, no_samples
from .config import KDEConfig
from .naive import draw_samples, samples_needed


def kde_noncausal_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    config: KDEConfig,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`.naive.kde_noncausal` through the Triton kernels.

    Draws the hash and the samples as the torch path does (the blocks' lse
    that the AMM distribution needs comes from one extra block-only launch
    without gradient), so both agree for the same generator state.
    Differentiable w.r.t. q, k and v through the Triton backward; out
    [B, Hq, N, Dv] in v's dtype, lse [B, Hq, N] float32.
    """
    B, Hq, _, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    qf = fold_groups(q, Hkv)
    num_blocks = math.ceil(M / config.block_size)
    lsh = AngularLSH(D, config.lsh_bits, generator=generator).to(q.device)
    perm_q, blk_q, q_len = sorted_blocks(lsh(qf), num_blocks)
    perm_k, blk_k, k_len = sorted_blocks(lsh(k), num_blocks)

    def attend(idx, log_w):
        return fused_sorted_attention(qf, k, v, perm_q, perm_k, idx, log_w.detach(),
                                      torch.gather(blk_k, 2, idx), q_block=q_len,
                                      k_block=k_len, scale=scale)

    empty = no_samples(B, Hkv, q.device)
    if not samples_needed(config, num_blocks):
        out, lse = attend(*empty)
    else:
        block_lse = None
        if config.sample_size < M:
            with torch.no_grad():
                block_lse = attend(*empty)[1]
        out, lse = attend(*draw_samples(qf, k, v, block_lse, [(blk_q, blk_k)], scale, config,
                                        generator))
    return unfold_groups(out, Hq), unfold_groups(lse, Hq)
