"""Recursive causal decomposition shared by the LSH-based methods.

HyperAttention (arXiv 2310.05869, §4 "causal masking") splits the causal
attention matrix of a length-n sequence into three blocks: the two diagonal
halves, which are causal problems of length n/2, and the lower-left block
(second-half queries against first-half keys), which has no mask and is
handed to a non-causal approximator. Recursing until the blocks are at most
``min_seq_len`` long, where attention is computed exactly, gives

    level 1: one off-diagonal block of size n/2 x n/2
    level 2: two blocks of size n/4 x n/4, ...

All off-diagonal blocks of one level have the same shape (the sequence is
padded at the end to leaf·2^L, where padded keys sit in every real query's
future and padded queries are dropped), so each level is ONE batched call of
the approximator. The deepest level's blocks (at most ``min_seq_len`` keys)
are exact: with the two leaves beside each they are exact causal attention
on spans of two leaves, so the leaves and that level are one batched exact
causal call, and the approximator only sees blocks of more than
``min_seq_len`` keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .exact import ExactConfig, exact_forward, exact_lse, warn_exact_fallback, warn_no_speedup
from .merge import merge_partials

# approximate(q, k, v, scale) -> (out, lse): non-causal partial attention of
# q [B', Hq, n, D] over k, v [B', Hkv, m, D]; out/lse in the accumulation dtype.
Approximator = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], tuple]


def causal_levels(n: int, min_seq_len: int) -> tuple[int, int]:
    """Number of recursion levels L and leaf length, with leaf <= max(min_seq_len, 1)."""
    if n <= min_seq_len:
        return 0, n
    levels = math.ceil(math.log2(n / max(min_seq_len, 1)))
    return levels, math.ceil(n / 2**levels)


def _square_causal(q, k, v, *, scale, approximate, min_seq_len, leaf_dtype=None):
    B, n = q.shape[0], q.shape[2]
    levels, leaf = causal_levels(n, min_seq_len)
    n_pad = leaf * 2**levels
    if n_pad != n:
        pad = (0, 0, 0, n_pad - n)
        q, k, v = F.pad(q, pad), F.pad(k, pad), F.pad(v, pad)
    if levels and leaf <= min_seq_len:
        # The deepest level's off-diagonal blocks are exact: with the two leaves beside
        # each, they make exact causal attention on spans of 2 leaves, one call, no merge.
        levels, leaf = levels - 1, 2 * leaf
    nb = 2**levels
    # Leaves: exact causal attention inside each span of ``leaf`` rows, the spans in the batch
    # dim (views for B = 1). Their results stay in that span-major layout, [B·nb, Hq, leaf, ·]:
    # the merge writes the final [B, Hq, n, ·] layout in its first pass (no re-layout copy).
    def spans(x):
        return x.unflatten(2, (nb, leaf)).transpose(1, 2).reshape(B * nb, x.shape[1], leaf,
                                                                  x.shape[-1])

    leaves = (q, k, v) if leaf_dtype in (None, q.dtype) else (x.to(leaf_dtype) for x in (q, k, v))
    out, lse = exact_lse(*map(spans, leaves), scale=scale, is_causal=True)
    parts = []  # (blocks, out, lse) of each level's off-diagonal blocks
    for level in range(levels, 0, -1):
        blocks = 2 ** (level - 1)
        half = n_pad // (2 * blocks)

        def halves(x, second, blocks=blocks, half=half):
            h = x.shape[1]
            x = x.reshape(B, h, blocks, 2, half, x.shape[-1])[:, :, :, second]
            return x.transpose(1, 2).reshape(B * blocks, h, half, x.shape[-1])

        parts.append((blocks, *approximate(halves(q, 1), halves(k, 0), halves(v, 0), scale)))
    out, lse = _merge_levels(out, lse, parts, batch=B)
    return out[:, :, :n], lse[:, :, :n]


def _merge_levels(out, lse, parts, *, batch):
    """Merge the leaves' partials with every level's into ``(out [B, H, n, Dv], lse [B, H, n])``.

    ``out`` [B·nb, H, leaf, Dv], ``lse`` [B·nb, H, leaf]: the leaves, span-major (row
    ``b·leaf + t`` of the sequence is ``[·, b, ·, t]``); each part ``(blocks, out
    [B·blocks, H, half, Dv], lse [B·blocks, H, half])`` covers the second half of each of
    ``blocks`` equal spans of the rows. The result is :func:`.merge.merge_partials` of all
    parts, computed as ``Σ_p e^{lse_p - lse} out_p`` with ``lse = m + log Σ_p e^{lse_p - m}``
    (m the detached largest lse of each row, a shift that cancels) found first on the
    [B, H, n] log-sum-exps: one pass over the leaves' out (writing the final layout), one
    ``addcmul_`` per part, no division pass. Rows no part covers get out 0, lse -inf.
    """
    if not parts:  # one span: the leaves' own layout is [B, H, n, ·]
        return out, lse
    B = batch
    nb, H, leaf = lse.shape[0] // B, lse.shape[1], lse.shape[2]
    acc = lse.dtype

    def span_major(x, blocks):  # a part [B·blocks, H, half, ·] as [B, blocks, half/leaf, H, leaf, ·]
        return x.unflatten(0, (B, blocks)).unflatten(3, (-1, leaf)).transpose(2, 3)

    def second(x, blocks):  # rows covered by a part, of x [B, nb, H, leaf, ·]
        return x.unflatten(1, (blocks, 2, -1))[:, :, 1]

    leaf_lse = lse.unflatten(0, (B, nb))
    parts = [(blocks, span_major(o, blocks), span_major(s, blocks)) for blocks, o, s in parts]
    grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (out, lse, *(x for p in parts for x in p[1:])))
    with torch.no_grad():  # the shift cancels: no gradient flows through it
        m = leaf_lse.detach().clone()
        for blocks, _, part_lse in parts:
            view = second(m, blocks)
            torch.maximum(view, part_lse.detach(), out=view)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    den = torch.exp(leaf_lse - m)
    den = den.clone() if grad else den  # exp saved its output for backward
    for blocks, _, part_lse in parts:
        second(den, blocks).add_(torch.exp(part_lse - second(m, blocks)))
    nonzero = den > 0  # else every part is empty (m = 0): every weight below is 0
    total = m + torch.log(torch.where(nonzero, den, torch.ones_like(den)))
    w = torch.exp(leaf_lse - total).unsqueeze(-1)
    leaf_out = out.unflatten(0, (B, nb))
    if grad:
        res = (leaf_out * w).to(acc)  # out of place: the kernel saved its out for backward
    else:
        final = torch.empty(B, H, nb * leaf, out.shape[-1], dtype=acc, device=out.device)
        res = final.unflatten(2, (nb, leaf)).transpose(1, 2)
        if leaf_out.dtype == acc:
            torch.mul(leaf_out, w, out=res)
        else:  # widen, then scale in place: a mixed-dtype mul is several times slower on CPU
            res.copy_(leaf_out).mul_(w)
    scratch = None  # parts in a lower dtype (bfloat16 sketches) are widened here, in turn
    for blocks, part_out, part_lse in parts:
        wp = torch.exp(part_lse - second(total, blocks)).unsqueeze(-1)
        if part_out.dtype != acc and not grad:  # a mixed-dtype addcmul_ is 7x slower on CPU
            if scratch is None:
                scratch = torch.empty(max(p[1].numel() for p in parts), dtype=acc,
                                      device=out.device)
            part_out = scratch[:part_out.numel()].view(part_out.shape).copy_(part_out)
        second(res, blocks).addcmul_(part_out, wp)  # promotes to acc
    lse = torch.where(nonzero, total, torch.full_like(total, float("-inf")))
    lse = lse.transpose(1, 2).reshape(B, H, nb * leaf)
    return res.transpose(1, 2).reshape(B, H, nb * leaf, -1), lse


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    approximate: Approximator,
    min_seq_len: int,
    leaf_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention by recursive halving with a non-causal approximator.

    Parameters
    ----------
    q : [B, Hq, N, D]; k, v : [B, Hkv, M, D] / [B, Hkv, M, Dv]; causal mask
        aligned bottom-right (query i sees keys j <= i + M - N).
    approximate : non-causal approximator for the off-diagonal blocks.
    min_seq_len : blocks of at most this length are computed exactly, here,
        never handed to ``approximate``.
    leaf_dtype : dtype of the exact leaves' products (default q's; e.g. bfloat16 for
        float32 inputs under the LSH methods' ``sketch_dtype``); softmax and
        accumulation stay in the accumulation dtype.

    Returns
    -------
    (out [B, Hq, N, Dv], lse [B, Hq, N]) in the accumulation dtype. With the
    exact method as ``approximate`` this equals exact causal attention.
    """
    N, M = q.shape[2], k.shape[2]
    if M > N:
        # The first M - N keys are visible to every query: a non-causal block.
        prefix = _noncausal(q, k[:, :, : M - N], v[:, :, : M - N], scale, approximate, min_seq_len)
        diag = _square_causal(
            q, k[:, :, M - N :], v[:, :, M - N :], scale=scale, approximate=approximate,
            min_seq_len=min_seq_len, leaf_dtype=leaf_dtype,
        )
        return merge_partials(*diag, *prefix)
    if M < N:
        # The first N - M queries see no key at all.
        out, lse = _square_causal(
            q[:, :, N - M :], k, v, scale=scale, approximate=approximate, min_seq_len=min_seq_len,
            leaf_dtype=leaf_dtype,
        )
        empty = N - M
        out = F.pad(out, (0, 0, empty, 0))
        lse = F.pad(lse, (empty, 0), value=float("-inf"))
        return out, lse
    return _square_causal(q, k, v, scale=scale, approximate=approximate, min_seq_len=min_seq_len,
                          leaf_dtype=leaf_dtype)


def _noncausal(q, k, v, scale, approximate, min_seq_len):
    if k.shape[2] <= min_seq_len:
        return exact_lse(q, k, v, scale=scale)
    return approximate(q, k, v, scale)


def recursion_is_exact(N: int, M: int, min_seq_len: int) -> bool:
    """Whether the causal recursion on N queries and M keys computes only exact blocks.

    True when the non-causal key prefix (M - N keys, if any) and the first
    level's off-diagonal block (ceil(min(N, M) / 2) keys) have at most
    ``min_seq_len`` keys: then every block is exact and one exact causal call
    gives the same result faster.
    """
    return max(M - N, 0) <= min_seq_len and math.ceil(min(N, M) / 2) <= min_seq_len


_EXACT = ExactConfig()


def approximate_or_exact(q, k, v, *, is_causal, scale, min_seq_len, noncausal, need_lse,
                         sink=0, window=0, method="sketch", cpu_causal_break_even=0,
                         leaf_dtype=None):
    """Dispatch shared by the LSH methods (HyperAttention, KDEformer).

    Exact attention when the problem is at most ``min_seq_len`` long (keys for
    non-causal; for causal, whenever the recursion would only compute exact
    blocks, see :func:`recursion_is_exact`), with a one-time
    :class:`~.exact.ExactFallbackWarning` naming ``method``; otherwise
    ``noncausal(q, k, v, scale, exact_first, exact_last)`` directly (the first
    ``sink`` keys exact), or inside the causal recursion where off-diagonal
    blocks with at most ``min_seq_len`` keys are exact and every other block
    attends exactly to its first ``sink`` and last ``window`` keys (with the
    exact leaves, every query sees its ``window`` preceding keys and the
    sequence's first ``sink`` keys exactly). A causal sketch on CPU with fewer than
    ``cpu_causal_break_even`` queries (the method's measured break-even against SDPA)
    warns once with :class:`~.exact.NoSpeedupWarning`. ``leaf_dtype``: the recursion's
    exact leaves' product dtype (:func:`causal_attention`); the exact fallback keeps q's.
    """
    N, M = q.shape[2], k.shape[2]
    if (is_causal and recursion_is_exact(N, M, min_seq_len)) or (
        not is_causal and M <= min_seq_len
    ):
        warn_exact_fallback(method, f"min_seq_len={min_seq_len} covers "
                            f"{'every block of the causal recursion' if is_causal else 'the keys'}")
        return exact_forward(q, k, v, is_causal=is_causal, scale=scale, config=_EXACT,
                             generator=None, need_lse=need_lse)
    if not is_causal:
        return noncausal(q, k, v, scale, sink, 0)
    if q.device.type == "cpu" and N < cpu_causal_break_even:
        warn_no_speedup(method, f"causal on CPU below {cpu_causal_break_even} queries")

    def approximate(qb, kb, vb, s):  # every block has more than min_seq_len keys
        return noncausal(qb, kb, vb, s, sink, window)

    return causal_attention(q, k, v, scale=scale, approximate=approximate, min_seq_len=min_seq_len,
                            leaf_dtype=leaf_dtype)
