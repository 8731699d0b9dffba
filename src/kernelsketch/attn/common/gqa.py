"""Layout helpers: grouped-query attention folding and row gathers.

Query head ``h`` uses key/value head ``h // G`` with ``G = Hq // Hkv`` (the
convention of ``torch.repeat_interleave`` and SDPA's ``enable_gqa``). For any
method that treats queries independently, the G query heads that share a
key/value head can be folded into the query-row axis, so the keys are never
copied: ``[B, Hq, N, D] -> [B, Hkv, G*N, D]``.
"""

from __future__ import annotations

import torch


def fold_groups(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """[B, Hq, N, D] -> [B, Hkv, G*N, D]; row ``g*N + i`` is query i of group member g."""
    B, Hq, N, D = q.shape
    return q.reshape(B, kv_heads, (Hq // kv_heads) * N, D)


def unfold_groups(x: torch.Tensor, q_heads: int) -> torch.Tensor:
    """Inverse of :func:`fold_groups` for outputs [B, Hkv, G*N, ...] -> [B, Hq, N, ...]."""
    B, Hkv, GN = x.shape[:3]
    return x.reshape(B, q_heads, GN * Hkv // q_heads, *x.shape[3:])


def query_positions(num_queries: int, num_keys: int, groups: int, device) -> torch.Tensor:
    """Key-aligned positions of folded query rows, causal mask aligned bottom-right.

    Query i of N sees keys j <= i + (M - N), as in FlashAttention for N != M.
    Returns an int64 tensor of length ``groups * num_queries``.
    """
    pos = torch.arange(num_queries, device=device) + (num_keys - num_queries)
    return pos.repeat(groups)


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of x [B, H, R, D] at idx [B, H, S] -> [B, H, S, D] (differentiable in x).

    One ``index_select`` on the flattened rows (several times faster on CPU
    than ``gather`` with an index expanded over D).
    """
    B, H, R, D = x.shape
    base = torch.arange(B * H, device=idx.device).reshape(B, H, 1) * R
    rows = x.reshape(B * H * R, D).index_select(0, (idx + base).reshape(-1))
    return rows.reshape(*idx.shape, D)
