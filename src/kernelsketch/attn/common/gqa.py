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


def gather_rows(x: torch.Tensor, idx: torch.Tensor, kv_heads: int | None = None) -> torch.Tensor:
    """Rows of x [B, H, R, D] at idx [B, H, S] -> [B, H, S, D] (differentiable in x).

    With ``kv_heads``, idx [B, kv_heads, S] indexes the rows of
    ``fold_groups(x, kv_heads)`` ([B, kv_heads, G·R, D]) and the result is
    [B, kv_heads, S, D]. One ``index_select`` on x's storage read as rows of D
    (several times faster on CPU than ``gather`` with an index expanded over
    D); views whose rows are contiguous and whose strides are multiples of D
    (the causal recursion's half blocks, their GQA fold) are read in place,
    never copied.
    """
    B, H, R, D = x.shape
    Hf = H if kv_heads is None else kv_heads
    G = H // Hf
    strides = [0 if n == 1 else s for n, s in zip(x.shape, x.stride())]
    if x.is_contiguous() or not x.numel() or strides[3] != 1 or any(s % D for s in strides[:3]):
        x = x.contiguous()
        strides = [R * H * D, R * D, D, 1]
        flat = x.reshape(B * H * R, D)
    else:
        span = sum((n - 1) * s for n, s in zip(x.shape, strides)) // D + 1
        flat = x.as_strided((span, D), (D, 1))
    sB, sH, sR = (s // D for s in strides[:3])
    dev = idx.device
    base = (torch.arange(B, device=dev).reshape(B, 1, 1) * sB
            + torch.arange(Hf, device=dev).reshape(1, Hf, 1) * (G * sH))
    offs = base + idx * sR if G == 1 else base + (idx // R) * sH + (idx % R) * sR
    return flat.index_select(0, offs.reshape(-1)).reshape(*idx.shape, D)


def batched_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for a [..., R, K] and b [..., K, C] (or b [K, C]), reading the larger
    operand in place where its leading dims, ordered by its strides, merge into one
    batch dim: the causal recursion's half blocks and heads do, and ``matmul`` would copy
    them (it folds the batch dims in their given order). The smaller operand is laid out
    in the same order (a copy of it at most). Result [..., R, C] (a permuted view)."""
    lead = a.dim() - 2
    big = a if b.dim() == 2 or a.numel() >= b.numel() else b
    order = sorted(range(lead), key=lambda i: big.stride(i), reverse=True)

    def merged(x):  # [..., r, c] -> [N, r, c] in ``order``; a view for the larger operand
        xp = x.permute(*order, lead, lead + 1)
        return xp.view(-1, *x.shape[-2:]) if x is big else xp.reshape(-1, *x.shape[-2:])

    try:
        a3, b3 = merged(a), (b if b.dim() == 2 else merged(b))
    except RuntimeError:
        return a @ b
    y = (a3 @ b3).view(*[a.shape[i] for i in order], a.shape[-2], b.shape[-1])
    return y.permute(*sorted(range(lead), key=order.__getitem__), lead, lead + 1)
