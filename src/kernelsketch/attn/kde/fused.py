"""KDEformer through one fused kernel call: the sortLSH Triton kernels (CUDA half
precision, or float32 where torch allows TF32 matmuls; ``TRITON_INTERPRET=1`` in tests) or SDPA's CPU flash kernel (CPU)."""

from __future__ import annotations

import math

import torch

from ...sketch.lsh import AngularLSH
from ..common.exact import exact_lse, sketch_product_dtype
from ..common.gqa import fold_groups, unfold_groups
from ..common.sortlsh.blocks import lsh_buckets, no_samples, sorted_blocks, split_exact_keys
from ..hyper.fused import sorted_sampled_attention
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
    """:func:`.naive.kde_noncausal` through one fused kernel call.

    Draws the hash and the samples as the torch path does (the AMM
    distribution's density estimates need only the logits of its sampled
    rows), so both agree for the same generator state. Differentiable w.r.t.
    q, k and v; out [B, Hq, N, Dv] in the
    products' dtype (q's, or bfloat16 under ``config.sketch_dtype``), lse [B, Hq, N]
    float32 (float64 for float64 inputs).
    """
    B, Hq, _, D = q.shape
    Hkv = k.shape[1]
    k_exact, v_exact, k_rest, v_rest = split_exact_keys(k, v, exact_first, exact_last)
    M = k_rest.shape[2]
    if not M:  # every key is in the exact set
        out, lse = exact_lse(fold_groups(q, Hkv), k_exact, v_exact, scale=scale)
        return unfold_groups(out, Hq), unfold_groups(lse, Hq)
    num_blocks = math.ceil(M / config.block_size)
    lsh = AngularLSH(D, config.lsh_bits, generator=generator).to(q.device)
    perm_q, blk_q, q_len = sorted_blocks(lsh_buckets(lsh, q, kv_heads=Hkv), num_blocks)
    perm_k, blk_k, k_len = sorted_blocks(lsh_buckets(lsh, k_rest), num_blocks)
    if samples_needed(config, num_blocks):
        idx, log_w = draw_samples(q, k_rest, v_rest, [(blk_q, blk_k)], scale, config, generator,
                                  k_exact)
    else:
        idx, log_w = no_samples(B, Hkv, q.device)
    first = min(exact_first, k.shape[2])
    out, lse = sorted_sampled_attention(q, k, v, perm_q, perm_k, idx, log_w.detach(),
                                        torch.gather(blk_k, 2, idx), q_block=q_len,
                                        k_block=k_len, scale=scale, exact_first=first,
                                        exact_last=k.shape[2] - M - first,
                                        product_dtype=sketch_product_dtype(q, config.sketch_dtype))
    return unfold_groups(out, Hq), unfold_groups(lse, Hq)
