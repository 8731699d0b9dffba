"""PolySketch attention, torch path: the block-causal algorithm, the linear form and the
short-sequence quadratic form (the reference of the Triton kernels in :mod:`.fused`).

Inputs are the scaled, normalised q', k' and their features; every function
returns the numerator Σ w̃_ij v_j and the denominator Σ w̃_ij (without the 1).
Theory: docs/polysketch.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .features import self_tensor
from .polynomial import polynomial_weights


def _to_blocks(x: torch.Tensor, front: int, blocks: int, block: int) -> torch.Tensor:
    """Zero-pad axis -2 with ``front`` rows before and rows after, to ``blocks*block``; split it."""
    back = blocks * block - front - x.shape[-2]
    x = F.pad(x, (0, 0, front, back))
    return x.reshape(*x.shape[:-2], blocks, block, x.shape[-1])


def _local_weights(qb, kb, fqb, fkb, *, degree, exact_local):
    """In-block weights [..., nb, b, b] with the causal (lower-triangular) mask."""
    b = qb.shape[-2]
    mask = torch.ones(b, b, dtype=torch.bool, device=qb.device).tril()
    if exact_local:
        return polynomial_weights(qb, kb, degree=degree, mask=mask)
    return polynomial_weights(fqb, fkb, degree=2, mask=mask)


def _causal_torch(q, k, v, fq, fk, *, degree, block_size, exact_local):
    """Block causal algorithm (torch). q, fq [B, Hkv, G, N, ·]; k, fk, v [B, Hkv, M, ·]."""
    N, M, b = q.shape[-2], k.shape[-2], block_size
    if N > M:  # the first N - M queries see no key: num = den = 0
        num, den = _causal_torch(q[..., N - M :, :], k, v, fq[..., N - M :, :], fk, degree=degree,
                                 block_size=b, exact_local=exact_local)
        return F.pad(num, (0, 0, N - M, 0)), F.pad(den, (N - M, 0))
    vp = torch.cat((v, torch.ones_like(v[..., :1])), dim=-1)  # [v, 1]: numerator and denominator
    nbk = -(-M // b)
    kb, fkb, vb = (_to_blocks(x, 0, nbk, b) for x in (k, fk, vp))
    block_kv = torch.matmul(self_tensor(fkb).transpose(-1, -2), vb)  # [B, Hkv, nbk, r², Dv+1]
    # Exclusive prefix sum over strictly earlier blocks (shifted, not cumsum - block_kv,
    # which would let a block's own keys leak in through rounding).
    prefix = F.pad(torch.cumsum(block_kv[:, :, :-1], dim=2), (0, 0, 0, 0, 1, 0))
    # Query i sits at key position i + M - N; queries are blocked on the same grid.
    c0, front = divmod(M - N, b)
    nbq = nbk - c0
    qb, fqb = (_to_blocks(x, front, nbq, b) for x in (q, fq))
    out = torch.matmul(self_tensor(fqb), prefix[:, :, None, c0:])
    local = _local_weights(qb, kb[:, :, None, c0:], fqb, fkb[:, :, None, c0:], degree=degree,
                           exact_local=exact_local)
    out = out + torch.matmul(local, vb[:, :, None, c0:])
    out = out.flatten(-3, -2)[..., front : front + N, :]
    return out[..., :-1], out[..., -1]


def _quadratic_torch(q, k, v, fq, fk, *, degree, block_size, exact_local, is_causal):
    """The same scores as the block / linear forms, materialised as [N, M] matrices.

    Cheaper than the r²-feature forms for short sequences (see :func:`use_quadratic`).
    """
    N, M = q.shape[-2], k.shape[-2]
    w = polynomial_weights(fq, fk.unsqueeze(2), degree=2)
    if is_causal:
        pos_q = torch.arange(N, device=q.device) + (M - N)
        pos_k = torch.arange(M, device=q.device)
        if exact_local:
            same = (pos_q // block_size).unsqueeze(1) == (pos_k // block_size).unsqueeze(0)
            w = torch.where(same, polynomial_weights(q, k.unsqueeze(2), degree=degree), w)
        w = w.masked_fill(pos_k.unsqueeze(0) > pos_q.unsqueeze(1), 0.0)
    return torch.matmul(w, v.unsqueeze(2)), w.sum(-1)


def use_quadratic(n: int, m: int, r: int, d: int, dv: int) -> bool:
    """Whether materialising the [n, m] sketched scores costs fewer flops than the
    r²-feature (linear-time) form: n·m·(r + d + dv) < (n + m)·r²·(dv + 1)."""
    return n * m * (r + d + dv) < (n + m) * r * r * (dv + 1)


def _noncausal_torch(fq, fk, v):
    """Linear form Φ(Q)(Φ(K)ᵀ[V, 1]). fq [B, Hkv, G, N, r]; fk, v [B, Hkv, M, ·]."""
    vp = torch.cat((v, torch.ones_like(v[..., :1])), dim=-1)
    kv = torch.matmul(self_tensor(fk).transpose(-1, -2), vp)  # [B, Hkv, r², Dv+1]
    out = torch.matmul(self_tensor(fq), kv.unsqueeze(2))
    return out[..., :-1], out[..., -1]
