"""KDEformer, torch path (any device and dtype; the reference of the fused kernels).

Non-causal partial attention ``(out, lse)``: the LSH-colliding (sortLSH) blocks
exactly, plus keys importance-sampled from the AMM distribution that two
kernel density estimates give (the paper's §4). Theory: docs/kde.md.
"""

from __future__ import annotations

import math

import torch

from ...sketch.lsh import AngularLSH
from ...sketch.sampling import importance_sample, uniform_sample
from ..common.exact import partial_attention
from ..common.gqa import fold_groups, gather_rows, unfold_groups
from ..common.merge import merge_partials
from ..common.sortlsh import block_diagonal_attention, covered_by_blocks
from .config import KDEConfig


def _masked_lse(q, k, scale, keep, log_w=None):
    """log Σ_j keep_ij w_j exp(q_i·k_j·scale) over the given keys, [..., R]."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if log_w is not None:
        s = s + log_w.unsqueeze(-2)
    return torch.logsumexp(s.masked_fill(~keep, float("-inf")), dim=-1)


@torch.no_grad()
def amm_probabilities(qf, k, v, lse_blocks, covered, scale, config, generator):
    """KDEformer's sampling distribution over keys, [B, H, M] (unnormalised, > 0).

    ½·ĉ_j/Σĉ + ½·(‖v_j‖² + 1)/Σ(‖v‖² + 1), with ĉ_j the estimated squared norm of
    column j of D⁻¹A restricted to pairs outside the blocks. The distribution
    only chooses which keys to sample; the estimator is unbiased for any such
    choice, so it carries no gradient.
    """
    B, H, R, _ = qf.shape
    M = k.shape[2]
    acc = lse_blocks.dtype
    qa, ka = qf.to(acc), k.to(acc)
    # Row KDE: D̂_i = blocks (exact) + uniformly sampled other keys.
    idx, w = uniform_sample(M, min(config.kde_samples, M), batch_shape=(B, H), device=k.device,
                            generator=generator)
    keep = ~covered_by_blocks(covered, idx)
    lse_rest = _masked_lse(qa, gather_rows(ka, idx), scale, keep, w.log().to(acc))
    log_d = torch.logaddexp(lse_blocks, lse_rest)
    # Column KDE with kernel exp(2 s) and weights 1/D̂²: uniformly sampled query rows.
    rows, _ = uniform_sample(R, min(config.kde_samples, R), batch_shape=(B, H),
                             device=k.device, generator=generator)
    q_rows = gather_rows(qa, rows)
    s = 2 * torch.matmul(q_rows, ka.transpose(-1, -2)) * scale  # [B, H, S_q, M]
    s = s - 2 * torch.gather(log_d, 2, rows).unsqueeze(-1)
    blk_q, blk_k = covered[0]
    same_block = torch.gather(blk_q, 2, rows).unsqueeze(-1) == blk_k.unsqueeze(-2)
    log_c = torch.logsumexp(s.masked_fill(same_block, float("-inf")), dim=-2)
    col = torch.nan_to_num(torch.softmax(log_c, dim=-1), nan=0.0)
    # Row norms of [V, 1] (the ones column), all divided by c = max(1, max|v|)
    # so that squaring never overflows: (‖v_j‖² + 1)/c² = ‖v_j/c‖² + 1/c².
    va = v.to(acc)
    c = va.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1.0)
    vnorm = torch.linalg.vector_norm(va / c, dim=-1) ** 2 + c.squeeze(-1) ** -2
    return 0.5 * col + 0.5 * vnorm / vnorm.sum(-1, keepdim=True)


def samples_needed(config: KDEConfig, num_blocks: int) -> bool:
    """Whether the estimator samples keys: more than one block (one covers every pair)
    and ``sample_size > 0``."""
    return num_blocks > 1 and config.sample_size > 0


def draw_samples(qf, k, v, block_lse, covered, scale, config: KDEConfig, generator):
    """Sampled keys [B, H, s] int64 and their log-weights [B, H, s] (AMM distribution).

    Call only where :func:`samples_needed`. Every key with weight 1 once
    ``sample_size`` reaches the key count (``block_lse`` is then not read and
    may be None); otherwise ``block_lse`` [B, H, R] is the blocks' lse, which
    the distribution needs.
    """
    B, H, M = k.shape[:3]
    s = config.sample_size
    if s >= M:
        return (torch.arange(M, device=k.device).expand(B, H, M),
                torch.zeros(B, H, M, device=k.device))
    probs = amm_probabilities(qf, k, v, block_lse, covered, scale, config, generator)
    idx, w = importance_sample(probs, s, generator=generator)
    return idx, w.log()


def kde_noncausal(q, k, v, scale, config, generator):
    """Non-causal KDEformer partial ``(out, lse)`` in the accumulation dtype.

    q [B, Hq, N, D], k [B, Hkv, M, D], v [B, Hkv, M, Dv] (GQA groups folded into
    query rows). exp(lse) is an unbiased estimate of D_i = Σ_j exp(q_i·k_j·scale).
    """
    Hq, D = q.shape[1], q.shape[3]
    Hkv, M = k.shape[1], k.shape[2]
    qf = fold_groups(q, Hkv)
    num_blocks = math.ceil(M / config.block_size)
    lsh = AngularLSH(D, config.lsh_bits, generator=generator).to(q.device)
    out, lse, blk_q, blk_k = block_diagonal_attention(qf, k, v, lsh, num_blocks, scale=scale)
    covered = [(blk_q, blk_k)]
    if samples_needed(config, num_blocks):
        idx, log_w = draw_samples(qf, k, v, lse, covered, scale, config, generator)
        part = partial_attention(qf, gather_rows(k, idx), gather_rows(v, idx), scale=scale,
                                 mask=~covered_by_blocks(covered, idx), key_log_weights=log_w)
        out, lse = merge_partials(out, lse, *part)
    return unfold_groups(out, Hq), unfold_groups(lse, Hq)
