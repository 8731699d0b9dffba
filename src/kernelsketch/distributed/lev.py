"""LevAttention of sequence shards (``method="lev"``).

The universal set needs the keys' leverage scores, which depend on the whole
sequence only through the F x F Gram ``G = Σ_j φ(k_j) φ(k_j)ᵀ`` (F = d for
p = 2): one all-reduce of G, then every rank scores its own keys exactly as a
single process would. Each rank proposes its best candidates (``budget``
largest scores, or every score >= eps), one all-gather of the candidates'
(score, position) pairs picks the global set, and one all-reduce assembles
the selected keys and values (each owner fills its rows, zeros elsewhere);
the first ``sink`` keys join the set as in the single process. The local
window (``window - 1`` keys before the shard) comes from the preceding rank.
Bytes per rank: O(F² + P·budget + (budget + sink + window)·(D + Dv)),
independent of N; the result equals ``ks.attention(method="lev")`` on the
whole sequence. Theory: docs/distributed.md, docs/lev.md.
"""

from __future__ import annotations

import torch

from ..attn.common.gqa import fold_groups, gather_rows, unfold_groups
from ..attn.common.merge import merge_partials
from ..attn.lev.method import _partial, _window_partial
from ..attn.lev.selection import _choose, _PowerFeatures, score_dtype
from ..sketch.leverage import leverage_scores_from_gram
from .collectives import (
    all_gather,
    all_reduce_max,
    all_reduce_sum,
    group_rank,
    group_size,
    preceding_rows,
)
from .exact import ring_attention

__all__ = ["lev_context_parallel", "select_universal_set"]


@torch.no_grad()
def select_universal_set(k, config, generator, group=None) -> torch.Tensor:
    """Global positions [B, Hkv, S] of the universal set of the sharded keys (-1: padding).

    k [B, Hkv, m, D] is this rank's contiguous key shard; every rank gets the
    same set, ascending, as :func:`kernelsketch.attn.lev.universal_set` on
    the whole sequence (with the F x F Gram route for p >= 4).
    """
    P, me = group_size(group), group_rank(group)
    B, Hkv, m, d = k.shape
    M = P * m
    seed = 0
    if config.sketch_size is not None and config.p > 2:  # the draw of universal_set
        seed = int(torch.randint(2**62, (), generator=generator,
                                 device=generator.device if generator is not None else "cpu"))
    features = _PowerFeatures(d, config.p // 2, config.sketch_size, seed, k.device)
    phi = features(k.to(score_dtype(k.dtype, config.p)))
    gram = all_reduce_sum(phi.transpose(-1, -2) @ phi, group)
    if config.ridge > 0:
        F = gram.shape[-1]
        lam = config.ridge * gram.diagonal(dim1=-2, dim2=-1).sum(-1) / F
        gram = gram + lam[..., None, None] * torch.eye(F, dtype=gram.dtype, device=gram.device)
    score = leverage_scores_from_gram(phi, gram)
    pos = (me * m + torch.arange(m, device=k.device)).expand(B, Hkv, m)
    budget = None if config.eps is not None else min(config.budget, M)
    order, kept = _choose(score, pos, eps=config.eps, budget=budget, beyond=M + 1)
    cand = torch.stack((torch.where(kept, score.gather(-1, order), -1.0).double(),
                        torch.where(kept, pos.gather(-1, order), -1).double()))
    width = int(all_reduce_max(torch.tensor([cand.shape[-1]], device=k.device), group))
    cand = torch.nn.functional.pad(cand, (0, width - cand.shape[-1]), value=-1.0)
    every = all_gather(cand, group)  # [P, 2, B, Hkv, width]
    scores = every[:, 0].permute(1, 2, 0, 3).reshape(B, Hkv, P * width).to(score.dtype)
    positions = every[:, 1].permute(1, 2, 0, 3).reshape(B, Hkv, P * width).long()
    order, kept = _choose(scores, positions, eps=config.eps, budget=budget, beyond=M + 1)
    return torch.where(kept, positions.gather(-1, order), -1)


def lev_context_parallel(q, k, v, *, is_causal, scale, config, generator, group=None):
    """This rank's rows of LevAttention over the sharded sequence.

    q [B, Hq, n, D], k [B, Hkv, m, D], v [B, Hkv, m, Dv] (contiguous shards,
    validated by the caller; ``window`` needs n == m). Returns
    ``(out, lse)`` in the accumulation dtype, differentiable in q, k, v (the
    selection itself is not, as in the single-process method).
    """
    P, me = group_size(group), group_rank(group)
    B, Hq, n, D = q.shape
    Hkv, m = k.shape[1], k.shape[2]
    if config.window and n != m:
        raise ValueError(f"LevConfig.window needs query and key shards of equal length, got "
                         f"N/P={n} and M/P={m}")
    if config.eps is None and config.budget >= P * m and config.kind == "softmax":
        return ring_attention(q, k, v, is_causal=is_causal, scale=scale, group=group)
    idx = select_universal_set(k.detach(), config, generator, group)
    sink = min(config.sink, P * m)
    if sink:  # the first keys join the set (once: the set's own copies are dropped)
        idx = torch.cat((torch.arange(sink, device=idx.device).expand(B, Hkv, sink),
                         idx.masked_fill(idx < sink, -1)), dim=-1)
    if idx.shape[-1] == 0:  # no key reaches eps: one padded slot keeps the shapes non-empty
        idx = torch.full((B, Hkv, 1), -1, dtype=idx.dtype, device=idx.device)
    # Each owner fills the rows of its selected keys; the all-reduce assembles them.
    kv = torch.cat((k, v.to(k.dtype)), dim=-1)
    mine = (idx >= me * m) & (idx < (me + 1) * m)
    rows = gather_rows(kv, (idx - me * m).clamp(0, m - 1))
    selected = all_reduce_sum(torch.where(mine.unsqueeze(-1), rows, torch.zeros_like(rows)), group)
    k_sel, v_sel = selected[..., :D], selected[..., D:].to(v.dtype)
    G = Hq // Hkv
    qf = fold_groups(q, Hkv)
    valid = idx >= 0
    mask = valid.unsqueeze(2)
    if is_causal or config.window:  # key-aligned, bottom-right (query i sees j <= i + M - N)
        q_pos = (me * n + P * (m - n) + torch.arange(n, device=q.device)).repeat(G)
        q_pos = q_pos[None, None, :, None]
        key_pos = idx.clamp(min=0).unsqueeze(2)
        if is_causal:
            mask = mask & (key_pos <= q_pos)
        if config.window:  # those keys are counted by the window part
            mask = mask & ~((key_pos <= q_pos) & (key_pos > q_pos - config.window))
    out, lse = _partial(config, qf, k_sel, v_sel, scale=scale, mask=mask)
    if config.window:
        halo_len = config.window - 1
        halo = preceding_rows(kv, halo_len, group)[:, :, halo_len - min(halo_len, me * n):]
        keys = torch.cat((halo[..., :D], k), 2)
        vals = torch.cat((halo[..., D:].to(v.dtype), v), 2)
        qg = qf.reshape(B, Hkv, G, n, D)
        out, lse = merge_partials(out, lse, *_window_partial(qg, keys, vals, scale=scale,
                                                             config=config))
    return unfold_groups(out, Hq), unfold_groups(lse, Hq)
