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


def _square_causal(q, k, v, *, scale, approximate, min_seq_len):
    B, Hq, n, _ = q.shape
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
    # Leaves: exact causal attention inside each diagonal block, the blocks in the batch dim
    # (views for B = 1: the kernel then writes its output in the [B, H, n, ·] layout).
    def blocks(x):
        return x.reshape(B, x.shape[1], nb, leaf, x.shape[-1]).transpose(1, 2).reshape(
            B * nb, x.shape[1], leaf, x.shape[-1])

    out, lse = exact_lse(blocks(q), blocks(k), blocks(v), scale=scale, is_causal=True)
    out = out.reshape(B, nb, Hq, leaf, -1).transpose(1, 2).reshape(B, Hq, n_pad, -1)
    lse = lse.reshape(B, nb, Hq, leaf).transpose(1, 2).reshape(B, Hq, n_pad)
    parts = []  # (blocks, half, out, lse) of each level's off-diagonal blocks
    for level in range(levels, 0, -1):
        blocks = 2 ** (level - 1)
        half = n_pad // (2 * blocks)

        def halves(x, second, blocks=blocks, half=half):
            h = x.shape[1]
            x = x.reshape(B, h, blocks, 2, half, x.shape[-1])[:, :, :, second]
            return x.transpose(1, 2).reshape(B * blocks, h, half, x.shape[-1])

        off_out, off_lse = approximate(halves(q, 1), halves(k, 0), halves(v, 0), scale)
        parts.append((blocks, half, off_out.reshape(B, blocks, Hq, half, -1).transpose(1, 2),
                      off_lse.reshape(B, blocks, Hq, half).transpose(1, 2)))
    out, lse = _merge_levels(out, lse, parts)
    return out[:, :, :n], lse[:, :, :n]


def _merge_levels(out, lse, parts):
    """Merge the leaves' partials with every level's, in place where autograd allows.

    ``out`` [B, H, n, Dv], ``lse`` [B, H, n]: the leaves, every row; each part
    ``(blocks, half, out [B, H, blocks, half, Dv], lse [B, H, blocks, half])``
    covers the second half of each of ``blocks`` equal spans of the rows. The
    result is :func:`.merge.merge_partials` of all parts, computed as
    ``Σ_p e^{lse_p - m} out_p / Σ_p e^{lse_p - m}`` with one detached shift m:
    one pass over the leaves, one ``addcmul_`` per part, one division. Without
    autograd through the inputs, the leaves' ``out`` is the accumulator.
    """
    if not parts:
        return out, lse
    B, H = lse.shape[:2]
    acc = lse.dtype
    grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (out, lse, *(x for p in parts for x in p[2:])))
    out = out.to(acc).contiguous()  # in place through the views below

    def second(x, blocks, half):
        return x.view(B, H, blocks, 2, half, *x.shape[3:])[:, :, :, 1]

    with torch.no_grad():  # the shift cancels: no gradient flows through it
        m = lse.detach().clone()
        for blocks, half, _, part_lse in parts:
            view = second(m, blocks, half)
            torch.maximum(view, part_lse.detach(), out=view)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(lse - m)
    den = w.clone()
    num = out * w.unsqueeze(-1) if grad else out.mul_(w.unsqueeze(-1))
    for blocks, half, part_out, part_lse in parts:
        wp = torch.exp(part_lse - second(m, blocks, half))
        second(den, blocks, half).add_(wp)
        second(num, blocks, half).addcmul_(part_out, wp.unsqueeze(-1))  # promotes to acc
    nonzero = den > 0
    den_safe = torch.where(nonzero, den, torch.ones_like(den)).unsqueeze(-1)
    out = num / den_safe if grad else num.div_(den_safe)
    lse = torch.where(nonzero, m + torch.log(den_safe.squeeze(-1)),
                      torch.full_like(m, float("-inf")))
    return out, lse


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    approximate: Approximator,
    min_seq_len: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention by recursive halving with a non-causal approximator.

    Parameters
    ----------
    q : [B, Hq, N, D]; k, v : [B, Hkv, M, D] / [B, Hkv, M, Dv]; causal mask
        aligned bottom-right (query i sees keys j <= i + M - N).
    approximate : non-causal approximator for the off-diagonal blocks.
    min_seq_len : blocks of at most this length are computed exactly, here,
        never handed to ``approximate``.

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
            min_seq_len=min_seq_len,
        )
        return merge_partials(*diag, *prefix)
    if M < N:
        # The first N - M queries see no key at all.
        out, lse = _square_causal(
            q[:, :, N - M :], k, v, scale=scale, approximate=approximate, min_seq_len=min_seq_len
        )
        empty = N - M
        out = F.pad(out, (0, 0, empty, 0))
        lse = F.pad(lse, (empty, 0), value=float("-inf"))
        return out, lse
    return _square_causal(q, k, v, scale=scale, approximate=approximate, min_seq_len=min_seq_len)


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
                         sink=0, window=0, method="sketch", cpu_causal_break_even=0):
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
    warns once with :class:`~.exact.NoSpeedupWarning`.
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

    return causal_attention(q, k, v, scale=scale, approximate=approximate, min_seq_len=min_seq_len)
