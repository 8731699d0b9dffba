"""One sortLSH estimate (HyperAttention, KDEformer) through one fused kernel call: the
hash, the method's key sample, then the sorted blocks, the always-exact keys and the
weighted samples together (CPU: SDPA's flash kernel, :mod:`.flash`; CUDA: the Triton
kernels of :mod:`.fused`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ....sketch.lsh import AngularLSH
from ..causal import approximate_or_exact
from ..exact import exact_lse, sketch_product_dtype
from ..gqa import fold_groups, unfold_groups
from ..merge import merge_partials
from .blocks import lsh_buckets, no_samples, sorted_blocks, split_exact_keys
from .config import SortLSHConfig

# draw(k_rest, v_rest, k_exact, blk_q, blk_k, num_blocks) -> (idx [B, H, S] int64,
# log_w [B, H, S]) or None: the method's key sample over the estimator's keys.
Draw = Callable[..., tuple[torch.Tensor, torch.Tensor] | None]


def sorted_sampled_attention(q, k, v, perm_q, perm_k, idx, log_w, sample_blocks, *, q_block,
                             k_block, scale, exact_first, exact_last, product_dtype=None):
    """The sorted blocks, the always-exact keys and the samples of one estimator, one kernel call.

    CPU: :func:`.flash.flash_sorted_attention` (the exact keys inside the same call;
    arguments as there: q [B, Hq, N, D] read as the folded rows, not copied; out in
    ``product_dtype``). CUDA: the Triton kernels of :mod:`.fused` on the estimator's
    keys, merged with the exact keys' partial attention. Returns ``(out, lse)`` of the
    folded rows [B, H, R, ·].
    """
    kw = {"q_block": q_block, "k_block": k_block, "scale": scale}
    if q.device.type == "cpu":
        from .flash import flash_sorted_attention

        return flash_sorted_attention(q, k, v, perm_q, perm_k, idx, log_w, sample_blocks,
                                      exact_first=exact_first, exact_last=exact_last,
                                      product_dtype=product_dtype, **kw)
    from .fused import fused_sorted_attention

    qf = fold_groups(q, k.shape[1])
    k_exact, v_exact, k, v = split_exact_keys(k, v, exact_first, exact_last)
    out, lse = fused_sorted_attention(qf, k, v, perm_q, perm_k, idx, log_w, sample_blocks, **kw)
    if k_exact is None:
        return out, lse
    ex_out, ex_lse = exact_lse(qf, k_exact, v_exact, scale=scale)
    return merge_partials(out.to(lse.dtype), lse, ex_out.to(lse.dtype), ex_lse.to(lse.dtype))


def sortlsh_estimate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                     config: SortLSHConfig, generator: torch.Generator | None,
                     exact_first: int, exact_last: int, draw: Draw
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-causal sortLSH partial attention ``(out, lse)`` in one fused kernel call.

    q [B, Hq, N, D], k [B, Hkv, M, D], v [B, Hkv, M, Dv] (GQA: the groups are read as
    folded rows, not copied); the first ``exact_first`` and last ``exact_last`` keys are
    attended exactly; the estimator's ``config.block_size``-key sorted blocks and
    ``draw``'s sample cover the others. Draws from ``generator`` in the torch paths'
    order (the hash, then the sample), so both give the same estimate. Differentiable
    w.r.t. q, k and v; the sampling weights are constants. out [B, Hq, N, Dv] in the
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
    samples = draw(k_rest, v_rest, k_exact, blk_q, blk_k, num_blocks)
    idx, log_w = no_samples(B, Hkv, q.device) if samples is None else samples
    first = min(exact_first, k.shape[2])
    out, lse = sorted_sampled_attention(q, k, v, perm_q, perm_k, idx, log_w.detach(),
                                        torch.gather(blk_k, 2, idx), q_block=q_len,
                                        k_block=k_len, scale=scale, exact_first=first,
                                        exact_last=k.shape[2] - M - first,
                                        product_dtype=sketch_product_dtype(q, config.sketch_dtype))
    return unfold_groups(out, Hq), unfold_groups(lse, Hq)


def sortlsh_forward(q, k, v, *, is_causal, scale, config: SortLSHConfig, generator, need_lse,
                    estimator, method: str, cpu_causal_break_even: int):
    """The registry forward of a sortLSH method: the budget schedule
    (:meth:`SortLSHConfig.scheduled`), then exact attention up to its ``min_seq_len`` or
    ``estimator(q, k, v, scale, config, generator, exact_first, exact_last)`` directly
    (non-causal) or on the causal recursion's blocks, with the config's exact sink and
    window (:func:`..causal.approximate_or_exact`, which names ``method`` in its
    warnings); the recursion's exact leaves multiply in the sketch's product dtype
    (``config.sketch_dtype``)."""
    config = config.scheduled(is_causal=is_causal, num_keys=k.shape[2])
    return approximate_or_exact(
        q, k, v, is_causal=is_causal, scale=scale, min_seq_len=config.min_seq_len,
        noncausal=lambda qb, kb, vb, s, first, last: estimator(qb, kb, vb, s, config, generator,
                                                                first, last),
        need_lse=need_lse, sink=config.sink, window=config.window, method=method,
        cpu_causal_break_even=cpu_causal_break_even,
        leaf_dtype=sketch_product_dtype(q, config.sketch_dtype))
