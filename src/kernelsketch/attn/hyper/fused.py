"""HyperAttention through the fused sortLSH Triton kernels (CUDA; ``TRITON_INTERPRET=1`` in tests)."""

from __future__ import annotations

import math

import torch

from ...sketch.lsh import AngularLSH
from ..common.gqa import fold_groups, unfold_groups
from ..common.sortlsh import sorted_blocks
from ..common.sortlsh.fused import fused_sorted_attention, no_samples
from .config import HyperConfig
from .naive import draw_samples


def hyper_noncausal_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    config: HyperConfig,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`.naive.hyper_noncausal` (one hash round) through the Triton kernels.

    Draws the hash and the samples exactly as the torch path does, so both
    give the same result for the same generator state. Differentiable w.r.t.
    q, k and v through the Triton backward (out and lse); the sampling
    weights are constants of the estimator. out [B, Hq, N, Dv] in v's dtype,
    lse [B, Hq, N] float32.
    """
    B, Hq, _, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    qf = fold_groups(q, Hkv)
    num_blocks = math.ceil(M / config.block_size)
    lsh = AngularLSH(D, config.lsh_bits, generator=generator).to(q.device)
    perm_q, _, q_len = sorted_blocks(lsh(qf), num_blocks)
    perm_k, blk_k, k_len = sorted_blocks(lsh(k), num_blocks)
    samples = draw_samples(k, v, config, generator) if num_blocks > 1 else None
    idx, log_w = no_samples(B, Hkv, q.device) if samples is None else samples
    out, lse = fused_sorted_attention(qf, k, v, perm_q, perm_k, idx, log_w.detach(),
                                      torch.gather(blk_k, 2, idx), q_block=q_len, k_block=k_len,
                                      scale=scale)
    return unfold_groups(out, Hq), unfold_groups(lse, Hq)
