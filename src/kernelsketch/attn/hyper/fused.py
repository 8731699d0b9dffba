"""HyperAttention through one fused kernel call: the sortLSH Triton kernels (CUDA half
precision, or float32 where torch allows TF32 matmuls; ``TRITON_INTERPRET=1`` in tests) or SDPA's CPU flash kernel (CPU)."""

from __future__ import annotations

import math

import torch

from ...sketch.lsh import AngularLSH
from ..common.exact import exact_lse, sketch_product_dtype
from ..common.gqa import fold_groups, unfold_groups
from ..common.merge import merge_partials
from ..common.sortlsh.blocks import lsh_buckets, no_samples, sorted_blocks, split_exact_keys
from .config import HyperConfig
from .naive import draw_samples


def sorted_sampled_attention(q, k, v, perm_q, perm_k, idx, log_w, sample_blocks, *, q_block,
                             k_block, scale, exact_first, exact_last, product_dtype=None):
    """The sorted blocks, the always-exact keys and the samples of one estimator, one kernel call.

    CPU: :func:`~kernelsketch.attn.common.sortlsh.flash.flash_sorted_attention`
    (the exact keys inside the same call; arguments as there: q [B, Hq, N, D] read
    as the folded rows, not copied; out in ``product_dtype``). CUDA: the Triton kernels of
    :mod:`~kernelsketch.attn.common.sortlsh.fused` on the estimator's keys, merged
    with the exact keys' partial attention. Returns ``(out, lse)`` of the folded
    rows [B, H, R, ·].
    """
    kw = {"q_block": q_block, "k_block": k_block, "scale": scale}
    if q.device.type == "cpu":
        from ..common.sortlsh.flash import flash_sorted_attention

        return flash_sorted_attention(q, k, v, perm_q, perm_k, idx, log_w, sample_blocks,
                                      exact_first=exact_first, exact_last=exact_last,
                                      product_dtype=product_dtype, **kw)
    from ..common.sortlsh.fused import fused_sorted_attention

    qf = fold_groups(q, k.shape[1])
    k_exact, v_exact, k, v = split_exact_keys(k, v, exact_first, exact_last)
    out, lse = fused_sorted_attention(qf, k, v, perm_q, perm_k, idx, log_w, sample_blocks, **kw)
    if k_exact is None:
        return out, lse
    ex_out, ex_lse = exact_lse(qf, k_exact, v_exact, scale=scale)
    return merge_partials(out.to(lse.dtype), lse, ex_out.to(lse.dtype), ex_lse.to(lse.dtype))


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
    """:func:`.naive.hyper_noncausal` (one hash round) through one fused kernel call.

    Draws the hash and the samples exactly as the torch path does, so both
    give the same result for the same generator state. Differentiable w.r.t.
    q, k and v (out and lse); the sampling weights are constants of the
    estimator. out [B, Hq, N, Dv] in the
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
    perm_q, _, q_len = sorted_blocks(lsh_buckets(lsh, q, kv_heads=Hkv), num_blocks)
    perm_k, blk_k, k_len = sorted_blocks(lsh_buckets(lsh, k_rest), num_blocks)
    samples = draw_samples(k_rest, v_rest, config, generator) if num_blocks > 1 else None
    idx, log_w = no_samples(B, Hkv, q.device) if samples is None else samples
    first = min(exact_first, k.shape[2])
    out, lse = sorted_sampled_attention(q, k, v, perm_q, perm_k, idx, log_w.detach(),
                                        torch.gather(blk_k, 2, idx), q_block=q_len,
                                        k_block=k_len, scale=scale, exact_first=first,
                                        exact_last=k.shape[2] - M - first,
                                        product_dtype=sketch_product_dtype(q, config.sketch_dtype))
    return unfold_groups(out, Hq), unfold_groups(lse, Hq)
