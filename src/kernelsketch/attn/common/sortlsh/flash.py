"""sortLSH blocks plus weighted key samples in ONE call of SDPA's CPU flash kernel.

The CPU twin of :func:`.fused.fused_sorted_attention` (same arguments, same
function of the same hash and samples), plus an optional set of keys that
every query attends to exactly. Layout: the LSH-sorted queries are cut into
``nb`` blocks of ``q_block`` rows, which become the "heads" of one
:func:`~kernelsketch.attn.common.exact.flash_lse` call; block ``b`` attends to

    [exact keys (every block) | sorted key block b | sampled keys (every block)]

with one additive float mask per block, broadcast over its query rows:
0 on the exact and block keys (``-inf`` on the padding of the last block),
``log w_j`` on sampled key j, or ``-inf`` where j lies in block b (the block
already counts that pair). No Python loop over blocks, no merge pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..exact import flash_lse
from ..gqa import gather_rows
from ..merge import accumulation_dtype


def flash_sorted_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    perm_q: torch.Tensor,
    perm_k: torch.Tensor,
    sample_idx: torch.Tensor,
    log_weights: torch.Tensor,
    sample_blocks: torch.Tensor,
    *,
    q_block: int,
    k_block: int,
    scale: float,
    exact_first: int = 0,
    exact_last: int = 0,
    product_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted block diagonal + exact keys + masked weighted samples, one flash call (CPU).

    Parameters
    ----------
    q : [B, Hq, N, D] queries, read as the R = G·N rows of each key head's G query
        heads (:func:`~kernelsketch.attn.common.gqa.fold_groups`, not copied; G = 1
        for folded q); k : [B, H, M, D]; v : [B, H, M, Dv]; CPU, one dtype
        (float32, bfloat16, float16, float64).
    exact_first, exact_last : the first and last keys of k, attended exactly
        by every query; the estimator's keys are the rest,
        ``k[:, :, exact_first : M - exact_last]`` (M' keys), to which the
        following indices refer.
    perm_q : [B, H, R], perm_k : [B, H, M'] int64, the original row / key of
        each LSH-sorted position; sorted row r is in block ``r // q_block``,
        sorted key c in block ``c // k_block``.
    sample_idx : [B, H, S] int64 sampled keys (duplicates allowed);
        log_weights : [B, H, S] their log importance weights (constants);
        sample_blocks : [B, H, S] the sorted block of each sampled key.
    product_dtype : dtype of the kernel's q, k, v (default q's): q, k and v are
        rounded to it once, before the gathers (e.g. bfloat16 for float32 inputs,
        :func:`~kernelsketch.attn.common.exact.sketch_product_dtype`).

    Returns
    -------
    out [B, H, R, Dv] in ``product_dtype`` and lse [B, H, R] (float32; float64 for
    float64 q), folded rows in the original order; differentiable w.r.t. q, k and v (the
    log-weights, permutations and indices are constants).
    """
    B, H, M = k.shape[:3]
    D = q.shape[-1]
    R, Mr, S = perm_q.shape[2], perm_k.shape[2], sample_idx.shape[2]
    E = exact_first + exact_last
    nb = max(math.ceil(R / q_block), math.ceil(Mr / k_block))
    dev = q.device
    mask_dtype = accumulation_dtype(q.dtype)
    if product_dtype is not None and product_dtype != q.dtype:
        q, k, v = q.to(product_dtype), k.to(product_dtype), v.to(product_dtype)
    # Queries: sorted, padded to nb blocks (padded rows repeat row 0 and are dropped).
    rows = F.pad(perm_q, (0, nb * q_block - R))
    qs = gather_rows(q, rows, H).reshape(B * H, nb, q_block, D)
    # Keys of block b: [exact keys | sorted block b | samples], one gather.
    blk = F.pad(perm_k + exact_first, (0, nb * k_block - Mr)).reshape(B, H, nb, k_block)
    parts = [blk]
    if E:
        ex = torch.cat((torch.arange(exact_first, device=dev), torch.arange(M - exact_last, M,
                                                                               device=dev)))
        parts.insert(0, ex.expand(B, H, nb, E))
    if S:
        parts.append((sample_idx + exact_first).unsqueeze(2).expand(B, H, nb, S))
    key_idx = torch.cat(parts, dim=-1) if len(parts) > 1 else blk
    L = key_idx.shape[-1]
    key_idx = key_idx.reshape(B, H, nb * L)
    ks = gather_rows(k, key_idx).reshape(B * H, nb, L, D)
    vs = gather_rows(v, key_idx).reshape(B * H, nb, L, v.shape[-1])
    # One additive mask per block: 0 on exact and block keys (-inf on the last block's
    # padding), log w_j on samples outside block b, -inf on samples inside it.
    mask = torch.zeros(B * H, nb, L, dtype=mask_dtype, device=dev)
    if nb * k_block > Mr:
        pad = (torch.arange(nb * k_block, device=dev) >= Mr).reshape(nb, k_block)
        mask[:, :, E:E + k_block].masked_fill_(pad, float("-inf"))
    if S:
        own = sample_blocks.reshape(B * H, 1, S) == torch.arange(nb, device=dev).reshape(1, nb, 1)
        lw = log_weights.to(mask_dtype).reshape(B * H, 1, S)
        mask[:, :, E + k_block:] = lw.masked_fill(own, float("-inf"))
    out, lse = flash_lse(qs, ks, vs, scale=scale, mask=mask.unsqueeze(2))
    out = out.reshape(B, H, nb * q_block, -1)
    lse = lse.reshape(B, H, nb * q_block)
    # Back to the original row order: row i sits at its rank in the sorted order.
    rank = torch.empty_like(perm_q).scatter_(
        2, perm_q, torch.arange(R, device=dev).expand_as(perm_q))
    return gather_rows(out, rank), torch.gather(lse, 2, rank)
