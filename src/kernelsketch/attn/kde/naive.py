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
from ..common.merge import accumulation_dtype, merge_many
from ..common.sortlsh import block_diagonal_attention, covered_by_blocks
from ..common.sortlsh.blocks import split_exact_keys
from .config import KDEConfig


def _masked_lse(q, k, scale, keep, log_w=None):
    """log Σ_j keep_ij w_j exp(q_i·k_j·scale) over the given keys, [..., R]."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if log_w is not None:
        s = s + log_w.unsqueeze(-2)
    return torch.logsumexp(s.masked_fill(~keep, float("-inf")), dim=-1)


@torch.no_grad()
def amm_probabilities(qf, k, v, covered, scale, config, generator, k_exact=None):
    """KDEformer's sampling distribution over keys, [B, H, M] (unnormalised, > 0).

    ½·ĉ_j/Σĉ + ½·(‖v_j‖² + 1)/Σ(‖v‖² + 1), with ĉ_j the estimated squared norm of
    column j of D⁻¹A restricted to pairs outside the blocks. ``covered`` holds
    the (query, key) block ids of the sortLSH blocks; ``k_exact`` [B, H, E, D]
    the keys every query attends to exactly (their mass enters D̂), or None.
    The distribution only chooses which keys to sample; the estimator is
    unbiased for any such choice, so it carries no gradient.
    """
    B, H, R, _ = qf.shape
    M = k.shape[2]
    acc = accumulation_dtype(qf.dtype)
    ka = k.to(acc)
    # Row KDE at uniformly sampled query rows: D̂_i = exact part (blocks and exact keys)
    # + uniformly sampled other keys.
    idx, w = uniform_sample(M, min(config.kde_samples, M), batch_shape=(B, H), device=k.device,
                            generator=generator)
    rows, _ = uniform_sample(R, min(config.kde_samples, R), batch_shape=(B, H),
                             device=k.device, generator=generator)
    q_rows = gather_rows(qf, rows).to(acc)
    blk_q, blk_k = covered[0]
    blk_rows = torch.gather(blk_q, 2, rows)
    logits = torch.matmul(q_rows, ka.transpose(-1, -2)) * scale  # [B, H, S_q, M]
    same = blk_rows.unsqueeze(-1) == blk_k.unsqueeze(-2)
    # Every pass on the [S_q, M] logits relative to the row maximum: e = exp(l - max) <= 1.
    row_max = logits.amax(-1, keepdim=True)
    e = torch.exp(logits - row_max)
    log_exact = row_max.squeeze(-1) + torch.log((e * same).sum(-1))  # blocks (exact)
    if k_exact is not None:
        ex = torch.matmul(q_rows, k_exact.to(acc).transpose(-1, -2)) * scale
        log_exact = torch.logaddexp(log_exact, torch.logsumexp(ex, dim=-1))
    keep = blk_rows.unsqueeze(-1) != torch.gather(blk_k, 2, idx).unsqueeze(-2)
    lse_rest = _masked_lse(q_rows, gather_rows(ka, idx), scale, keep, w.log().to(acc))
    log_d = torch.logaddexp(log_exact, lse_rest)
    # Column KDE with kernel exp(2 s) and weights 1/D̂² over the sampled rows, outside the
    # blocks: ĉ_j ∝ Σ_i e_ij² exp(2 (max_i - log D̂_i)), the row factors scaled by their
    # largest (a constant of every column, which the normalisation below removes).
    t = 2 * (row_max.squeeze(-1) - log_d)
    row_w = torch.exp(t - t.amax(-1, keepdim=True)).nan_to_num(0.0)
    col = torch.matmul(row_w.unsqueeze(-2), (e * e).masked_fill_(same, 0.0)).squeeze(-2)
    col = torch.nan_to_num(col / col.sum(-1, keepdim=True), nan=0.0)
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


def draw_samples(qf, k, v, covered, scale, config: KDEConfig, generator, k_exact=None):
    """Sampled keys [B, H, s] int64 and their log-weights [B, H, s] (AMM distribution).

    Call only where :func:`samples_needed`. Every key with weight 1 once
    ``sample_size`` reaches the key count; otherwise drawn from
    :func:`amm_probabilities` (arguments as there).
    """
    B, H, M = k.shape[:3]
    s = config.sample_size
    if s >= M:
        return (torch.arange(M, device=k.device).expand(B, H, M),
                torch.zeros(B, H, M, device=k.device))
    probs = amm_probabilities(qf, k, v, covered, scale, config, generator, k_exact)
    idx, w = importance_sample(probs, s, generator=generator)
    return idx, w.log()


def kde_noncausal(q, k, v, scale, config, generator, exact_first=0, exact_last=0):
    """Non-causal KDEformer partial ``(out, lse)`` in the accumulation dtype.

    q [B, Hq, N, D], k [B, Hkv, M, D], v [B, Hkv, M, Dv] (GQA groups folded into
    query rows). The first ``exact_first`` and last ``exact_last`` keys are
    attended exactly by every query; the estimator runs on the others. exp(lse)
    is an unbiased estimate of D_i = Σ_j exp(q_i·k_j·scale).
    """
    Hq, D = q.shape[1], q.shape[3]
    Hkv = k.shape[1]
    qf = fold_groups(q, Hkv)
    k_exact, v_exact, k, v = split_exact_keys(k, v, exact_first, exact_last)
    parts = [] if k_exact is None else [partial_attention(qf, k_exact, v_exact, scale=scale)]
    M = k.shape[2]
    if M:
        num_blocks = math.ceil(M / config.block_size)
        lsh = AngularLSH(D, config.lsh_bits, generator=generator).to(q.device)
        out, lse, blk_q, blk_k = block_diagonal_attention(qf, k, v, lsh, num_blocks, scale=scale)
        parts.append((out, lse))
        covered = [(blk_q, blk_k)]
        if samples_needed(config, num_blocks):
            idx, log_w = draw_samples(qf, k, v, covered, scale, config, generator, k_exact)
            parts.append(partial_attention(qf, gather_rows(k, idx), gather_rows(v, idx),
                                           scale=scale, mask=~covered_by_blocks(covered, idx),
                                           key_log_weights=log_w))
    out, lse = merge_many(parts)
    return unfold_groups(out, Hq), unfold_groups(lse, Hq)
