"""``method="lev"``: attention over the universal key set (LevAttention, arXiv 2410.05462).

Queries attend exactly (softmax, the paper's practical variant, or normalised
``|x|^p``) to the selected keys of their key/value head, optionally plus a
local window; the two parts are disjoint and merged by log-sum-exp. The set is
chosen from all M keys; for strictly causal decoding with the guarantee over
the prefix, use :class:`.kvcache.LevKVCache`. Theory: docs/lev.md.
"""

from __future__ import annotations

import math

import torch

from ..common.exact import ExactConfig, exact_forward, flash_applies, flash_lse, partial_attention
from ..common.gqa import fold_groups, gather_rows, query_positions, unfold_groups
from ..common.merge import accumulation_dtype, merge_partials
from ..common.spec import MethodSpec
from .config import LevConfig
from .selection import universal_set


def power_partial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    p: int,
    scale: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised ``|x|^p`` attention of q over k, as a partial attention.

    Weights ``|scale·<q, k_j>|^p / Σ_l |scale·<q, k_l>|^p``. Returns
    ``(out [..., n, Dv], lse [..., n])`` with ``lse = log Σ_j |scale·<q, k_j>|^p``
    (so parts merge with :func:`~kernelsketch.attn.common.merge.merge_partials`);
    rows with no kept key or all-zero scores get out = 0, lse = -inf. Computed
    as ``(|s| / max|s|)^p`` so it neither overflows nor has a NaN gradient at 0.
    """
    acc = accumulation_dtype(q.dtype)
    a = (torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale).abs()
    if mask is not None:
        a = a.masked_fill(~mask, 0.0)
    m = a.amax(dim=-1).detach()
    m_safe = torch.where(m > 0, m, torch.ones_like(m))
    w = (a / m_safe.unsqueeze(-1)) ** p
    denom = w.sum(dim=-1)
    nonzero = denom > 0
    denom_safe = torch.where(nonzero, denom, torch.ones_like(denom))
    out = torch.matmul(w, v.to(acc)) / denom_safe.unsqueeze(-1)
    lse = torch.where(nonzero, p * torch.log(m_safe) + torch.log(denom_safe),
                      torch.full_like(m, float("-inf")))
    return out, lse


def _partial(config: LevConfig, q, k, v, *, scale, mask):
    if config.kind == "power":
        return power_partial_attention(q, k, v, p=config.p, scale=scale, mask=mask)
    return partial_attention(q, k, v, scale=scale, mask=mask)


def _window_partial(q, k, v, *, scale, config):
    """Attention of each query to the keys (pos - window, pos], in query blocks.

    q [B, Hkv, G, N, D]; query i sits at key position i + M - N. Query block b
    of c rows needs the c + window - 1 contiguous keys ending at its last
    position, so memory is O(N (c + window) D) instead of O(N M).
    """
    B, Hkv, G, N, D = q.shape
    # A window of M or more keys holds every key up to the query: clamp it to the sequence.
    M = k.shape[2]
    w = min(config.window, M)
    c = max(16, w)
    nb = math.ceil(N / c)
    q = torch.nn.functional.pad(q, (0, 0, 0, nb * c - N))
    dev = q.device
    first = torch.arange(nb, device=dev) * c + (M - N)  # position of each block's first query
    key_pos = first[:, None] - w + 1 + torch.arange(c + w - 1, device=dev)  # [nb, L]
    q_pos = first[:, None] + torch.arange(c, device=dev)  # [nb, c]
    mask = ((key_pos[:, None, :] <= q_pos[:, :, None]) & (key_pos[:, None, :] > q_pos[:, :, None] - w)
            & (key_pos[:, None, :] >= 0) & (key_pos[:, None, :] < M))
    idx = key_pos.clamp(0, M - 1)
    if config.kind == "softmax" and flash_applies(q):
        # SDPA's CPU flash kernel: the query blocks in the batch, grouped heads as heads,
        # the band as one additive mask per block (broadcast over heads).
        L, Hq, Dv = idx.shape[1], Hkv * G, v.shape[-1]
        qb = q.reshape(B, Hq, nb, c, D).transpose(1, 2).reshape(B * nb, Hq, c, D)
        kb = k[:, :, idx].transpose(1, 2).reshape(B * nb, Hkv, L, D)
        vb = v[:, :, idx].transpose(1, 2).reshape(B * nb, Hkv, L, Dv)
        bias = torch.zeros(mask.shape, dtype=accumulation_dtype(q.dtype), device=dev)
        bias = bias.masked_fill(~mask, float("-inf")).unsqueeze(1).repeat(B, 1, 1, 1)
        out, lse = flash_lse(qb, kb, vb, scale=scale, mask=bias)
        out = out.reshape(B, nb, Hq, c, Dv).transpose(1, 2).reshape(B, Hkv, G, nb * c, Dv)
        lse = lse.reshape(B, nb, Hq, c).transpose(1, 2).reshape(B, Hkv, G, nb * c)
        out, lse = out[:, :, :, :N].to(lse.dtype), lse[:, :, :, :N]
        return out.reshape(B, Hkv, G * N, Dv), lse.reshape(B, Hkv, G * N)
    kb = k[:, :, idx].unsqueeze(2)  # [B, Hkv, 1, nb, L, D]
    vb = v[:, :, idx].unsqueeze(2)
    qb = q.reshape(B, Hkv, G, nb, c, D)
    out, lse = _partial(config, qb, kb, vb, scale=scale, mask=mask)
    out = out.reshape(B, Hkv, G, nb * c, -1)[:, :, :, :N]
    lse = lse.reshape(B, Hkv, G, nb * c)[:, :, :, :N]
    return out.reshape(B, Hkv, G * N, -1), lse.reshape(B, Hkv, G * N)


def lev_forward(q, k, v, *, is_causal, scale, config, generator, need_lse):
    """Registry entry of LevAttention (see :class:`LevConfig` and docs/lev.md)."""
    B, Hq, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    if config.eps is None and config.budget >= M and config.kind == "softmax":
        return exact_forward(q, k, v, is_causal=is_causal, scale=scale,
                             config=_EXACT_CONFIG, generator=None, need_lse=need_lse)
    budget = None if config.eps is not None else min(config.budget, M)
    idx = universal_set(k, config.p, config.eps, budget, ridge=config.ridge,
                        sketch_size=config.sketch_size, generator=generator)  # [B, Hkv, S]
    sink = min(config.sink, M)
    if sink:  # the first keys join the set (once: the set's own copies are dropped)
        idx = torch.cat((torch.arange(sink, device=idx.device).expand(*idx.shape[:2], sink),
                         idx.masked_fill(idx < sink, -1)), dim=-1)
    if idx.shape[-1] == 0:  # no key reaches eps: one padded slot keeps the shapes non-empty
        idx = torch.full((*idx.shape[:2], 1), -1, dtype=idx.dtype, device=idx.device)
    valid = idx >= 0
    gidx = idx.clamp(min=0)
    k_sel, v_sel = gather_rows(k, gidx), gather_rows(v, gidx)
    same_keys_for_all = not (is_causal or config.window or config.eps is not None or sink)
    if same_keys_for_all and config.kind == "softmax" and not need_lse:
        # Every query sees the same S keys: one fused SDPA call (flash / cuDNN on GPU).
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k_sel, v_sel, scale=scale, enable_gqa=Hq != Hkv)
        return out, None
    groups = Hq // Hkv
    qf = fold_groups(q, Hkv)  # [B, Hkv, G*N, D]
    mask = valid.unsqueeze(2)  # [B, Hkv, 1, S]
    if is_causal or config.window:
        q_pos = query_positions(N, M, groups, q.device)[None, None, :, None]
        key_pos = gidx.unsqueeze(2)
        if is_causal:
            mask = mask & (key_pos <= q_pos)
        if config.window:  # those keys are counted by the window part
            mask = mask & ~((key_pos <= q_pos) & (key_pos > q_pos - config.window))
    out, lse = _partial(config, qf, k_sel, v_sel, scale=scale, mask=mask)
    if config.window:
        qg = qf.reshape(B, Hkv, groups, N, D)
        out, lse = merge_partials(out, lse, *_window_partial(qg, k, v, scale=scale, config=config))
    return unfold_groups(out, Hq), (unfold_groups(lse, Hq) if need_lse else None)


_EXACT_CONFIG = ExactConfig()

METHOD = MethodSpec(
    name="lev",
    forward=lev_forward,
    config_cls=LevConfig,
    summary="LevAttention: attention over the leverage-score universal key set (+ local window)",
    paper="arXiv 2410.05462",
    causal=True,
)
