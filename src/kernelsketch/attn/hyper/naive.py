"""HyperAttention, torch path (any device and dtype; the reference of the fused kernels).

Non-causal partial attention ``(out, lse)``: sortLSH block diagonal computed
exactly (Alg. 1) plus a sampled residual over the keys outside a row's blocks
(Alg. 2/3), merged by log-sum-exp. Theory: docs/hyper.md.
"""

from __future__ import annotations

import math

import torch

from ...sketch.lsh import AngularLSH
from ...sketch.sampling import importance_sample, uniform_sample
from ..common.exact import partial_attention
from ..common.gqa import fold_groups, gather_rows, unfold_groups
from ..common.merge import accumulation_dtype, merge_many
from ..common.sortlsh import block_diagonal_attention, covered_by_blocks
from ..common.sortlsh.blocks import split_exact_keys
from .config import HyperConfig


def draw_samples(k, v, config: HyperConfig, generator):
    """Sampled key indices [B, Hkv, s] int64 and their log-weights [B, Hkv, s], or None.

    Uniform (the paper) or ``p_j ∝ ‖v_j‖`` mixed with uniform; weights
    ``1/(s p_j)`` make the sampled part unbiased. None without sampling; every
    key with weight 1 once the sample size reaches the key count.
    """
    B, Hkv, M = k.shape[:3]
    num_samples = config.num_samples(M)
    if num_samples == 0:
        return None
    if num_samples >= M:
        return (torch.arange(M, device=k.device).expand(B, Hkv, M),
                torch.zeros(B, Hkv, M, device=k.device))
    probs = sampling_probabilities(v, config)
    if probs is None:
        idx, w = uniform_sample(M, num_samples, batch_shape=(B, Hkv), device=k.device,
                                generator=generator)
    else:
        idx, w = importance_sample(probs, num_samples, generator=generator)
    return idx, w.log()


def sampling_probabilities(v, config: HyperConfig):
    """The sampling distribution [B, Hkv, M] over keys, or None for uniform sampling.

    ``value_norm``: ½/M + ½ ‖v_j‖/Σ‖v‖ (every key keeps probability >= 1/(2M)).
    """
    if config.sampling == "uniform":
        return None
    vf = v.detach().to(accumulation_dtype(v.dtype))
    # p_j depends on the norms' ratios only: divide by max|v| so ‖v_j‖ never overflows.
    vf = vf / vf.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    norms = torch.linalg.vector_norm(vf, dim=-1)
    return 0.5 / v.shape[2] + 0.5 * norms / norms.sum(-1, keepdim=True).clamp_min(1e-30)


def hyper_noncausal(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    config: HyperConfig,
    generator: torch.Generator | None,
    exact_first: int = 0,
    exact_last: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-causal HyperAttention partial ``(out, lse)`` in the accumulation dtype.

    q [B, Hq, N, D], k [B, Hkv, M, D], v [B, Hkv, M, Dv]. The first
    ``exact_first`` and last ``exact_last`` keys are attended exactly by every
    query (attention sinks, local window); the estimator runs on the other
    keys. The G = Hq/Hkv query heads sharing a key head are hashed and sorted
    together with that head's keys (GQA without copying keys). With
    ``hash_rounds > 1`` the blocks of all rounds are united, each pair counted
    once; sampled pairs that a block covers are masked. exp(lse) is an
    unbiased estimate of Σ_j exp(q_i·k_j·scale); out [B, Hq, N, Dv], lse [B, Hq, N].
    """
    Hq, D = q.shape[1], q.shape[3]
    Hkv = k.shape[1]
    qf = fold_groups(q, Hkv)
    k_exact, v_exact, k, v = split_exact_keys(k, v, exact_first, exact_last)
    parts = [] if k_exact is None else [partial_attention(qf, k_exact, v_exact, scale=scale)]
    M = k.shape[2]
    if M:
        num_blocks = math.ceil(M / config.block_size)
        covered = []  # block ids (queries, keys) of each hash round
        for _ in range(config.hash_rounds):
            lsh = AngularLSH(D, config.lsh_bits, generator=generator).to(q.device)
            out, lse, blk_q, blk_k = block_diagonal_attention(qf, k, v, lsh, num_blocks,
                                                              scale=scale, covered=covered)
            parts.append((out, lse))
            covered.append((blk_q, blk_k))

        samples = draw_samples(k, v, config, generator) if num_blocks > 1 else None
        if samples is not None:
            idx, log_w = samples
            seen = covered_by_blocks(covered, idx)
            parts.append(partial_attention(qf, gather_rows(k, idx), gather_rows(v, idx),
                                           scale=scale, mask=~seen, key_log_weights=log_w))
    out, lse = merge_many(parts)
    return unfold_groups(out, Hq), unfold_groups(lse, Hq)
