"""sortLSH blocks, torch path: exact attention on the block diagonal of the LSH-sorted order.

Queries and keys are hashed with the same angular LSH (Gray-code bucket ids,
sketch/lsh.py) and sorted by bucket; both sorted orders are cut into the same
number of blocks and query block i attends exactly to key block i
(HyperAttention Alg. 1, KDEformer §4 "A_spar"). Results are returned in the
original row order, with every row's block id so that callers can mask the
covered pairs out of their sampled estimates.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ....sketch.lsh import AngularLSH, inverse_gray_code
from ....sketch.projections import compute_dtype
from ..exact import partial_attention
from ..gqa import batched_matmul, fold_groups, gather_rows


@functools.lru_cache(maxsize=64)
def _inverse_gray_table(n_bits: int, device: torch.device) -> torch.Tensor:
    """``inverse_gray_code`` of every ``n_bits``-bit code, int64 [2**n_bits]."""
    return inverse_gray_code(torch.arange(1 << n_bits, device=device))


def lsh_buckets(lsh: AngularLSH, x: torch.Tensor, mean: torch.Tensor | None = None, *,
                kv_heads: int | None = None) -> torch.Tensor:
    """``lsh(x - mean)``, the Gray-code bucket ids int64 [...] of the centred rows of
    x [..., R, D], without validating x again (the attention entry point did).

    ``mean`` [..., 1, D] defaults to x's mean over its R rows (context parallel: the
    mean over every rank's rows of the problem, all-reduced). With ``kv_heads``, x is
    [B, H, R, D] and the ids are those of ``fold_groups(x, kv_heads)``'s rows
    [B, kv_heads, G·R], centred on each group's mean (``mean`` [B, kv_heads, 1, D]),
    without copying x. Centring: in pretrained
    LMs queries and keys each share a large common component and the two point apart
    (SmolLM2: the mean has 0.6-0.7 of the rows' norm, cosine between the q and k means
    -0.3 to -0.9), so uncentred hashes sort queries and keys by that offset and the
    rank-paired sorted blocks catch a query's heaviest key no more often than random
    blocks (docs/hyper.md). Only the partition changes: the estimator stays unbiased.

    The sign of (x - mean)·w is read as x·w > mean·w: one product of x in place (no
    centred copy; views of the causal recursion are not copied either). Up to 16 bits
    the sign code is one float32 product with the bit values (exact below 2**24) and
    the Gray inverse one lookup in a cached table: on CPU (n = 8192, 9 heads) this is
    20x faster than the int64 sum and the shift-XOR prefix of ``lsh(x)``."""
    with torch.no_grad():  # bucket ids carry no gradient
        xc = x.to(compute_dtype(x.dtype))
        planes = lsh.planes.to(xc.dtype)
        proj = batched_matmul(xc, planes)
        if kv_heads is not None:
            proj = fold_groups(proj, kv_heads)
        if mean is None:
            mean = xc.mean(dim=-2, keepdim=True)
            if kv_heads is not None:  # equal groups: the mean of the G heads' means
                mean = mean.unflatten(1, (kv_heads, -1)).mean(dim=2)
        bits = proj > mean.to(xc.dtype) @ planes
    if lsh.n_bits > 16:
        return inverse_gray_code((bits.long() * lsh.bit_values).sum(-1))
    code = bits.to(torch.float32) @ lsh.bit_values.to(torch.float32)
    return _inverse_gray_table(lsh.n_bits, code.device)[code.long()]


def sorted_blocks(bucket: torch.Tensor, num_blocks: int):
    """Sort rows by bucket; return (perm [.., R], block id of each original row [.., R], block len)."""
    rows = bucket.shape[-1]
    # Bucket ids are < 2**30: int32 keys sort 1.3x faster than int64 on CPU.
    perm = torch.argsort(bucket.to(torch.int32), dim=-1, stable=True)
    block_len = math.ceil(rows / num_blocks)
    rank = torch.empty_like(perm)
    rank.scatter_(-1, perm, torch.arange(rows, device=perm.device).expand_as(perm))
    return perm, rank // block_len, block_len


def _blocked(x: torch.Tensor, num_blocks: int, block_len: int, pad_value=0) -> torch.Tensor:
    """[B, H, R, ...] -> [B, H, num_blocks, block_len, ...] padding R at the end."""
    pad_rows = num_blocks * block_len - x.shape[2]
    if pad_rows:
        pad = [0, 0] * (x.dim() - 3) + [0, pad_rows]
        x = F.pad(x, pad, value=pad_value)
    return x.reshape(*x.shape[:2], num_blocks, block_len, *x.shape[3:])


def _unsort(x_sorted: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Inverse of gathering rows by ``perm`` (x_sorted [B, H, R, ...])."""
    idx = perm.reshape(*perm.shape, *([1] * (x_sorted.dim() - 3))).expand_as(x_sorted)
    return torch.empty_like(x_sorted).scatter(2, idx, x_sorted)


def block_diagonal_attention(qf, k, v, lsh, num_blocks, *, scale, covered=()):
    """Exact attention of each query over the keys of its sorted block.

    qf [B, H, R, D] (GQA groups folded into rows), k [B, H, M, D], v [B, H, M, Dv];
    ``lsh`` maps [..., D] to bucket ids; ``covered`` lists (blk_q, blk_k) of
    earlier rounds whose pairs are masked here so no pair is counted twice.
    Returns out [B, H, R, Dv], lse [B, H, R] (accumulation dtype, original row
    order) and the block id of every query row and key, [B, H, R] and [B, H, M].
    """
    B, H, R = qf.shape[:3]
    perm_q, blk_q, q_len = sorted_blocks(lsh_buckets(lsh, qf), num_blocks)
    perm_k, blk_k, k_len = sorted_blocks(lsh_buckets(lsh, k), num_blocks)
    qs = _blocked(gather_rows(qf, perm_q), num_blocks, q_len)
    ks = _blocked(gather_rows(k, perm_k), num_blocks, k_len)
    vs = _blocked(gather_rows(v, perm_k), num_blocks, k_len)
    mask = _blocked(torch.ones_like(perm_k, dtype=torch.bool), num_blocks, k_len, False)
    mask = mask.unsqueeze(-2)  # [B, H, nb, 1, k_len]: padded keys never count
    if covered:
        bq = torch.stack([torch.gather(c, 2, perm_q) for c, _ in covered], -1)
        bk = torch.stack([torch.gather(c, 2, perm_k) for _, c in covered], -1)
        bq = _blocked(bq, num_blocks, q_len, -1)
        bk = _blocked(bk, num_blocks, k_len, -2)
        mask = mask & ~(bq.unsqueeze(-2) == bk.unsqueeze(-3)).any(-1)
    out, lse = partial_attention(qs, ks, vs, scale=scale, mask=mask)
    out = out.reshape(B, H, -1, out.shape[-1])[:, :, :R]
    lse = lse.reshape(B, H, -1)[:, :, :R]
    return _unsort(out, perm_q), _unsort(lse, perm_q), blk_q, blk_k


def split_exact_keys(k: torch.Tensor, v: torch.Tensor, first: int, last: int):
    """Split keys [B, H, M, ·] into the always-exact set and the rest (both views or copies).

    The exact set is the first ``first`` keys (attention sinks) and the last
    ``last`` keys (the keys just before the query block in the causal
    recursion: the local window), clipped to M. Returns
    ``(k_exact, v_exact, k_rest, v_rest)`` with ``k_exact = None`` when the set
    is empty; ``k_rest`` is the contiguous slice ``first : M - last``.
    """
    M = k.shape[2]
    first = min(first, M)
    last = min(last, M - first)
    if not first and not last:
        return None, None, k, v
    rest = slice(first, M - last)
    if not last:
        return k[:, :, :first], v[:, :, :first], k[:, :, rest], v[:, :, rest]
    if not first:
        return k[:, :, M - last:], v[:, :, M - last:], k[:, :, rest], v[:, :, rest]
    ke = torch.cat((k[:, :, :first], k[:, :, M - last:]), dim=2)
    ve = torch.cat((v[:, :, :first], v[:, :, M - last:]), dim=2)
    return ke, ve, k[:, :, rest], v[:, :, rest]


def no_samples(batch: int, heads: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """An empty sample set: indices [B, H, 0] int64 and log-weights [B, H, 0] float32."""
    return (torch.zeros(batch, heads, 0, dtype=torch.long, device=device),
            torch.zeros(batch, heads, 0, device=device))


def covered_by_blocks(covered, key_idx):
    """bool [B, H, R, S]: sampled key ``key_idx`` [B, H, S] shares a block with row r in a round."""
    seen = None
    for blk_q, blk_k in covered:
        hit = blk_q.unsqueeze(-1) == torch.gather(blk_k, 2, key_idx).unsqueeze(-2)
        seen = hit if seen is None else seen | hit
    return seen
