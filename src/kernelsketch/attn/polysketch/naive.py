"""PolySketch attention, torch path: the block-causal algorithm, the linear form and the
short-sequence quadratic form (the reference of the Triton kernels in :mod:`.fused`).

Inputs are the scaled, normalised q', k' and their features; every function
returns the numerator Σ w̃_ij v_j and the denominator Σ w̃_ij (without the 1).
The causal scan and the linear form multiply in their inputs' dtype (bfloat16 on
CPU: :func:`product_dtype`; float32 accumulation inside each product), keep the
key/value states in the accumulation dtype and return the numerator and the
denominator in the inputs' dtype, each rounded once. Theory: docs/polysketch.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common.merge import accumulation_dtype
from .features import pair_features, pair_weights
from .polynomial import polynomial_weights

# Rows of pair features per step of the causal scan and of the linear form. Each step's
# features are a few MiB, formed, used and freed in turn: the r²-wide Φ of a whole
# sequence (150 MiB at 4k tokens, 9 heads) was written to fresh pages on every call, which
# took more CPU time than the products that read it.
STEP_ROWS = 512


def product_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the scan and the linear form multiply in for inputs of ``dtype``: bfloat16
    for bfloat16 on CPU (oneDNN's products, AMX / AVX512-BF16, accumulate in float32 and
    ran 2-3x faster than float32 ones on the scan's shapes: BENCHMARKS.md), otherwise the
    accumulation dtype (float16 products on CPU were no faster than float32)."""
    if dtype == torch.bfloat16 and device.type == "cpu":
        return dtype
    return accumulation_dtype(dtype)


def _to_blocks(x: torch.Tensor, front: int, blocks: int, block: int) -> torch.Tensor:
    """Zero-pad axis -2 with ``front`` rows before and rows after, to ``blocks*block``; split it."""
    back = blocks * block - front - x.shape[-2]
    if front or back:  # (F.pad copies even when it pads nothing)
        x = F.pad(x, (0, 0, front, back))
    return x.reshape(*x.shape[:-2], blocks, block, x.shape[-1])


def _block_major(x: torch.Tensor, front: int, blocks: int, block: int) -> torch.Tensor:
    """[B, H, (G,) L, c] -> [blocks, B·H, (G·)block, c] (contiguous): a block's rows of every
    head of a group together, so that one batched product serves the G query heads."""
    x = _to_blocks(x, front, blocks, block)
    if x.dim() == 6:  # queries [B, Hkv, G, blocks, block, c]
        B, H, G = x.shape[:3]
        return x.permute(3, 0, 1, 2, 4, 5).reshape(blocks, B * H, G * block, x.shape[-1])
    return x.flatten(0, 1).transpose(0, 1).contiguous()


def _local_weights(s: torch.Tensor, *, power: int, G: int, inplace: bool) -> torch.Tensor:
    """In-block weights s^power (power even) with the causal mask, from the scores s
    [..., G·b, b] of a block's queries (G heads) against its keys; in place when no
    gradient flows through s."""
    b = s.shape[-1]
    w = s.square_() if inplace else s.square()
    if power > 2:
        w = w.pow_(power // 2) if inplace else w.pow(power // 2)
    w = w.view(*w.shape[:-2], G, b, b)
    return (w.tril_() if inplace else w.tril()).view(s.shape)


def _causal_torch(q, k, v, fq, fk, *, degree, block_size, exact_local):
    """Block causal algorithm (torch). q, fq [B, Hkv, G, N, ·]; k, fk, v [B, Hkv, M, ·].

    A scan over the key blocks, :data:`STEP_ROWS` keys at a time: per step the pair
    features of its key blocks, their states Φ(K_c)ᵀ[V_c, 1], the exclusive prefix of
    the states (the running sum of the earlier steps, then a cumsum within the step),
    the queries' products with their blocks' prefixes, and the exact local blocks.
    """
    N, M, b = q.shape[-2], k.shape[-2], block_size
    if N > M:  # the first N - M queries see no key: num = den = 0
        num, den = _causal_torch(q[..., N - M :, :], k, v, fq[..., N - M :, :], fk, degree=degree,
                                 block_size=b, exact_local=exact_local)
        return F.pad(num, (0, 0, N - M, 0)), F.pad(den, (N - M, 0))
    B, Hkv, G = q.shape[:3]
    Dv, r = v.shape[-1], fq.shape[-1]
    acc = accumulation_dtype(v.dtype)
    inplace = not (torch.is_grad_enabled()
                   and any(t.requires_grad for t in (q, k, v, fq, fk)))
    vp = torch.cat((v, torch.ones_like(v[..., :1])), dim=-1)  # [v, 1]: numerator and denominator
    nbk = -(-M // b)
    # Query i sits at key position i + M - N; queries are blocked on the same grid, and
    # key blocks before c0 have no query.
    c0, front = divmod(M - N, b)
    kb, fkb, vb = (_block_major(x, 0, nbk, b) for x in (k, fk, vp))
    qb, fqb = (_block_major(x, front, nbk - c0, b) for x in (q, fq))
    lq, lk = (qb, kb) if exact_local else (fqb, fkb)
    weights = pair_weights(r, dtype=acc, device=fk.device).unsqueeze(-1)
    # Σ Φ(k_j)ᵀ[v_j, 1] over the earlier steps' keys (without the pair weights), in the
    # accumulation dtype: each step's product is rounded to the input dtype once, then added.
    state = vb.new_zeros(1, B * Hkv, weights.shape[0], Dv + 1, dtype=acc)
    step = max(1, STEP_ROWS // b)
    # The queries' blocks, written step by step in their final layout (the input dtype:
    # each row's numerator and denominator rounded once, in the fused product below).
    res = vb.new_empty(B, Hkv, G, nbk - c0, b, Dv + 1)

    def lay(x):  # [S·B·Hkv, G·b, Dv+1] -> [B, Hkv, G, S, b, Dv+1], a view
        return x.view(-1, B, Hkv, G, b, Dv + 1).permute(1, 2, 3, 0, 4, 5)

    for c in range(0, nbk, step):
        e = min(nbk, c + step)
        kv = torch.matmul(pair_features(fkb[c:e]).transpose(-1, -2), vb[c:e])
        # Exclusive prefix over strictly earlier blocks (shifted, not cumsum - kv, which
        # would let a block's own keys leak in through rounding), in acc.
        prefix = torch.cat((state, kv[:-1]), 0).cumsum(0)
        state = prefix[-1:] + kv[-1:]
        a = max(c, c0)
        if a >= e:
            continue
        qs = slice(a - c0, e - c0)
        hq = (prefix[a - c :] * weights).to(vb.dtype)
        out = torch.matmul(pair_features(fqb[qs]), hq).flatten(0, 1)
        w = _local_weights(torch.matmul(lq[qs], lk[a:e].transpose(-1, -2)),
                           power=degree if exact_local else 2, G=G, inplace=inplace)
        # Sketched and local parts summed before the rounding (float32 accumulation).
        res[:, :, :, qs] = lay(torch.baddbmm(out, w.flatten(0, 1), vb[a:e].flatten(0, 1)))
    out = res.view(B, Hkv, G, -1, Dv + 1)[..., front : front + N, :]
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
    """Linear form Φ(Q)(Φ(K)ᵀ[V, 1]). fq [B, Hkv, G, N, r]; fk, v [B, Hkv, M, ·].

    Through the pair features, :data:`STEP_ROWS` keys and then query rows (of all G
    heads of a group) at a time."""
    B, Hkv, G, N, r = fq.shape
    acc = accumulation_dtype(v.dtype)
    vp = torch.cat((v, torch.ones_like(v[..., :1])), dim=-1)
    kv = sum(torch.matmul(pair_features(fk[..., i : i + STEP_ROWS, :]).transpose(-1, -2),
                          vp[..., i : i + STEP_ROWS, :]).to(acc)
             for i in range(0, fk.shape[-2], STEP_ROWS))  # [B, Hkv, F, Dv+1]
    kv = (kv * pair_weights(r, dtype=acc, device=kv.device).unsqueeze(-1)).to(v.dtype)
    rows = fq.reshape(B, Hkv, G * N, r)
    out = torch.cat([torch.matmul(pair_features(rows[..., i : i + STEP_ROWS, :]), kv)
                     for i in range(0, G * N, STEP_ROWS)], -2).view(B, Hkv, G, N, -1)
    return out[..., :-1], out[..., -1]
