"""Merging partial attentions by log-sum-exp.

A *partial attention* over a key set S is the pair ``(out, lse)`` with
``lse_i = log Σ_{j∈S} w_j exp(s_ij)`` and ``out_i = Σ_{j∈S} w_j exp(s_ij) v_j / exp(lse_i)``
(``w_j`` are optional importance weights, 1 for exact parts). For disjoint key
sets the attention over their union is the softmax-weighted combination

    lse = log(exp(lse_a) + exp(lse_b)),   out = e^{lse_a - lse} out_a + e^{lse_b - lse} out_b,

which is FlashAttention's online-softmax rescaling. A row with no keys has
``lse = -inf`` and ``out = 0``; merging keeps such rows at exactly 0 with no
NaN in the value or its gradient, and the log-sum-exp stays differentiable
(detaching it would bias gradients through the merge).
"""

from __future__ import annotations

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def merge_partials(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial attentions over disjoint key sets.

    Parameters
    ----------
    out_a, out_b : [..., N, Dv] tensors (float32 or float64).
    lse_a, lse_b : [..., N] log-sum-exp of each part (``-inf`` for empty rows).

    Returns
    -------
    (out, lse) with the shapes of ``(out_a, lse_a)``.
    """
    m = torch.maximum(lse_a, lse_b)
    finite = torch.isfinite(m)
    m_safe = torch.where(finite, m, torch.zeros_like(m))
    wa = torch.exp(lse_a - m_safe)
    wb = torch.exp(lse_b - m_safe)
    total = wa + wb
    nonzero = total > 0
    total_safe = torch.where(nonzero, total, torch.ones_like(total))
    out = (wa / total_safe).unsqueeze(-1) * out_a + (wb / total_safe).unsqueeze(-1) * out_b
    lse = torch.where(nonzero, m_safe + torch.log(total_safe), torch.full_like(m, float("-inf")))
    return out, lse


def merge_many(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a non-empty list of partial attentions over pairwise disjoint key sets."""
    if not parts:
        raise ValueError("parts must be a non-empty list of (out, lse) pairs, got an empty list")
    out, lse = parts[0]
    for o, s in parts[1:]:
        out, lse = merge_partials(out, lse, o, s)
    return out, lse
