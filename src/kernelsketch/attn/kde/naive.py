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
from ..common.gqa import batched_matmul, fold_groups, gather_rows, unfold_groups
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


def _block_members(blk_k, blk_rows):
    """The keys sharing each row's block: int64 [B, H, S, K] and a bool mask of the real
    entries (K the largest block; rows of smaller blocks padded), for key block ids
    ``blk_k`` [B, H, M] and the rows' block ids ``blk_rows`` [B, H, S]."""
    M = blk_k.shape[-1]
    order = torch.argsort(blk_k, dim=-1, stable=True)  # keys grouped by block
    nb = int(torch.maximum(blk_k.max(), blk_rows.max())) + 1
    counts = torch.zeros(*blk_k.shape[:-1], nb, dtype=torch.long, device=blk_k.device)
    counts.scatter_add_(-1, blk_k, torch.ones_like(blk_k))
    starts = torch.cumsum(counts, -1) - counts
    size = torch.gather(counts, -1, blk_rows).unsqueeze(-1)
    t = torch.arange(max(int(counts.max()), 1), device=blk_k.device)
    pos = (torch.gather(starts, -1, blk_rows).unsqueeze(-1) + t).clamp_(max=M - 1)
    members = torch.gather(order, -1, pos.flatten(-2)).reshape(pos.shape)
    return members, t < size


@torch.no_grad()
def amm_probabilities(q, k, v, covered, scale, config, generator, k_exact=None):
    """KDEformer's sampling distribution over keys, [B, H, M] (unnormalised, > 0).

    ½·ĉ_j/Σĉ + ½·(‖v_j‖² + 1)/Σ(‖v‖² + 1), with ĉ_j the estimated squared norm of
    column j of D⁻¹A restricted to pairs outside the blocks. ``covered`` holds
    the (query, key) block ids of the sortLSH blocks; ``k_exact`` [B, H, E, D]
    the keys every query attends to exactly (their mass enters D̂), or None. q
    [B, Hq, N, D]: the R = G·N query rows of each of k's H heads (fold_groups; read
    in place, G = 1 for folded q).
    The distribution only chooses which keys to sample; the estimator is
    unbiased for any such choice, so it carries no gradient.

    Cost: one [B, H, S, M] buffer of doubled logits (S = ``kde_samples`` rows)
    and four passes over it (row maxima, shift, exp, column sums); everything
    else is [B, H, S, ·] over a row's block, the exact keys and the key sample.
    """
    B, H, M = k.shape[:3]
    R = q.shape[1] // H * q.shape[2]
    acc = accumulation_dtype(q.dtype)
    ka = k.to(acc)
    # Row KDE at uniformly sampled query rows: D̂_i = exact part (blocks and exact keys)
    # + uniformly sampled other keys.
    idx, w = uniform_sample(M, min(config.kde_samples, M), batch_shape=(B, H), device=k.device,
                            generator=generator)
    rows, _ = uniform_sample(R, min(config.kde_samples, R), batch_shape=(B, H),
                             device=k.device, generator=generator)
    q_rows = gather_rows(q, rows, H).to(acc)
    blk_q, blk_k = covered[0]
    blk_rows = torch.gather(blk_q, 2, rows)
    # 2·logits of the sampled rows against every key: [B, H, S, M].
    logits2 = batched_matmul(q_rows * (2 * scale), ka.transpose(-1, -2))  # k not copied
    members, real = _block_members(blk_k, blk_rows)
    in_block = torch.gather(logits2, -1, members).mul_(0.5).masked_fill_(~real, float("-inf"))
    log_d = torch.logsumexp(in_block, -1)  # the row's block (exact)
    if k_exact is not None:
        ex = torch.matmul(q_rows, k_exact.to(acc).transpose(-1, -2)) * scale
        log_d = torch.logaddexp(log_d, torch.logsumexp(ex, dim=-1))
    keep = blk_rows.unsqueeze(-1) != torch.gather(blk_k, 2, idx).unsqueeze(-2)
    log_d = torch.logaddexp(log_d, _masked_lse(q_rows, gather_rows(ka, idx), scale, keep,
                                               w.log().to(acc)))
    # Column KDE with kernel exp(2 s) and weights 1/D̂² over the sampled rows, outside the
    # blocks: ĉ_j ∝ Σ_i exp(2 s_ij - 2 log D̂_i - c), c the largest exponent (a constant of
    # every column, which the normalisation below removes); rows with D̂ = 0 drop out.
    shift = torch.where(torch.isfinite(log_d), 2 * log_d, float("inf"))
    top = logits2.amax(-1) - shift
    top = torch.where(torch.isfinite(top), top, float("-inf")).amax(-1, keepdim=True)
    shift += torch.where(torch.isfinite(top), top, 0.0)
    e2 = logits2.sub_(shift.unsqueeze(-1)).exp_()
    # The pairs inside a block get 0: one scatter along the keys, the padding entries sent
    # to the row's first member (also 0), or, for a row whose block has no key, writing
    # back the value of its column 0 (a boolean-mask index is 4x slower on CPU).
    has_keys = real[..., :1]
    to = torch.where(real, members, members[..., :1].masked_fill(~has_keys, 0))
    e2.scatter_(-1, to, torch.where(has_keys, 0.0, e2[..., :1]).expand_as(to))
    col = e2.sum(-2)
    col = torch.nan_to_num(col / col.sum(-1, keepdim=True), nan=0.0)
    # Row norms of [V, 1] (the ones column): ‖v_j‖² + 1, one pass over v. Where their sum
    # overflows, all are divided by c² = max(1, max|v|)², which the normalisation cancels:
    # (‖v_j‖² + 1)/c² = ‖v_j/c‖² + 1/c².
    va = v.to(acc)
    vnorm = torch.linalg.vector_norm(va, dim=-1) ** 2 + 1
    if not bool(torch.isfinite(vnorm.sum(-1)).all()):
        c = va.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1.0)
        vnorm = torch.linalg.vector_norm(va / c, dim=-1) ** 2 + c.squeeze(-1) ** -2
    return 0.5 * col + 0.5 * vnorm / vnorm.sum(-1, keepdim=True)


def samples_needed(config: KDEConfig, num_blocks: int) -> bool:
    """Whether the estimator samples keys: more than one block (one covers every pair)
    and ``sample_size > 0``."""
    return num_blocks > 1 and config.sample_size > 0


def draw_samples(q, k, v, covered, scale, config: KDEConfig, generator, k_exact=None):
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
    probs = amm_probabilities(q, k, v, covered, scale, config, generator, k_exact)
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
