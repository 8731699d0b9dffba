"""Ring attention: exact softmax attention of sequence shards (``method="exact"``).

Every rank keeps its queries; the key/value shards travel around the ring
(P - 1 shifts, each overlapped with the attention of the shard at hand) and
each rank merges the partial attention ``(out, lse)`` of its queries over
every visiting shard by log-sum-exp (attn/common/merge.py). The merge of
partials over disjoint key sets is exact, so the result is softmax attention
over the whole sequence (Liu, Zaharia, Abbeel, "Ring Attention with
Blockwise Transformers", arXiv 2310.01889).

Causal load balance (N == M, even shard length): with contiguous shards
rank r would attend to r + 1 shards and rank P - 1 to all P. The shards are
re-dealt zig-zag first (the sequence cut into 2P chunks, rank r holding
chunks r and 2P - 1 - r, one all-to-all of half a shard), so that every ring
step costs every rank the same half block, and the output is dealt back.

Backward recomputes the blocks from the saved ``(out, lse)`` (FlashAttention's
backward) while the key/value shards go around the ring again with their
gradients, which arrive at their owner after P shifts; memory stays
O(N/P · D) per rank beyond one block's scores.
Per rank: (P - 1)(N/P)(D + Dv) elements forward (+ N/(2P)(2D + Dv) + N/(2P)(Dv + 1)
for the zig-zag deal), twice that plus the key gradients backward.
Theory: docs/distributed.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attn.common.exact import exact_lse, partial_attention
from ..attn.common.gqa import fold_groups, unfold_groups
from ..attn.common.merge import accumulation_dtype, merge_partials
from .collectives import (
    _chained,
    _shift,
    all_to_all,
    group_rank,
    group_size,
    pack,
    start_shift,
    unpack,
)

__all__ = ["ring_attention"]

# Rows of queries per chunk of the backward's recomputed scores (memory chunk x keys).
_CHUNK = 1024


@dataclass(frozen=True)
class Segment:
    """Contiguous rows of a shard: global index ``start``, ``length`` rows, first local row ``offset``."""

    start: int
    length: int
    offset: int


# layout[rank] = (query segments, key segments) of that rank's local rows.
Layout = tuple[tuple[tuple[Segment, ...], tuple[Segment, ...]], ...]


def contiguous_layout(P: int, n: int, m: int) -> Layout:
    """Rank r holds queries [r n, (r+1) n) and keys [r m, (r+1) m)."""
    return tuple(((Segment(r * n, n, 0),), (Segment(r * m, m, 0),)) for r in range(P))


def zigzag_chunks(P: int) -> list[list[int]]:
    """Chunks (of 2P) held by each rank in the zig-zag deal: rank r holds r and 2P - 1 - r."""
    return [[r, 2 * P - 1 - r] for r in range(P)]


def contiguous_chunks(P: int) -> list[list[int]]:
    """Chunks (of 2P) held by each rank in contiguous shards: rank r holds 2r and 2r + 1."""
    return [[2 * r, 2 * r + 1] for r in range(P)]


def zigzag_layout(P: int, c: int) -> Layout:
    """Layout of the zig-zag deal with chunks of ``c`` rows (queries and keys alike)."""
    segs = tuple(tuple(Segment(j * c, c, i * c) for i, j in enumerate(chunks))
                 for chunks in zigzag_chunks(P))
    return tuple((s, s) for s in segs)


def deal_chunks(tensors: list[torch.Tensor], held: list[list[int]], wanted: list[list[int]],
                c: int, group) -> list[torch.Tensor]:
    """Re-deal equal chunks of ``c`` rows (axis 2) between ranks with one all-to-all.

    ``held[r]`` lists the chunk ids of rank r's local rows in order, ``wanted[r]``
    the ids it must end with. All tensors share dtype and the row axis; the
    result is differentiable (the backward deals the gradients back).
    """
    P, me = group_size(group), group_rank(group)
    owner = {j: r for r, chunks in enumerate(wanted) for j in chunks}
    source = {j: r for r, chunks in enumerate(held) for j in chunks}
    dtype = tensors[0].dtype

    def chunk_shapes(ids):
        return [t.shape[:2] + (c,) + t.shape[3:] for _ in ids for t in tensors]

    pieces, sizes = [], []
    for r in range(P):
        out_ids = sorted(j for j in held[me] if owner[j] == r)
        parts = [t[:, :, i * c:(i + 1) * c] for j in out_ids
                 for i in [held[me].index(j)] for t in tensors]
        pieces.append(pack(parts, dtype) if parts else tensors[0].new_zeros(0))
        in_ids = sorted(j for j in wanted[me] if source[j] == r)
        sizes.append(sum(int(torch.Size(s).numel()) for s in chunk_shapes(in_ids)))
    received = all_to_all(pieces, sizes, group)
    chunks = {}
    for r in range(P):
        in_ids = sorted(j for j in wanted[me] if source[j] == r)
        parts = unpack(received[r], chunk_shapes(in_ids)) if in_ids else []
        for i, j in enumerate(in_ids):
            chunks[j] = parts[i * len(tensors):(i + 1) * len(tensors)]
    return [torch.cat([chunks[j][t] for j in wanted[me]], dim=2) for t in range(len(tensors))]


def _mode(qs: Segment, ks: Segment, shift: int, causal: bool) -> str:
    """How queries ``qs`` see keys ``ks``: "skip", "full", "diag" (square causal) or "mask"."""
    if not causal:
        return "full"
    q_first = qs.start + shift  # key-aligned position of the first query
    q_last = q_first + qs.length - 1
    if ks.start > q_last:
        return "skip"
    if ks.start + ks.length - 1 <= q_first:
        return "full"
    if q_first == ks.start and qs.length == ks.length:
        return "diag"
    return "mask"


def _positions(q_first: int, n: int, groups: int, device) -> torch.Tensor:
    return (q_first + torch.arange(n, device=device)).repeat(groups)


def _block_forward(q, k, v, *, scale, mode, q_first, k_first):
    """Partial attention ``(out, lse)`` of q [B, Hq, n, D] over k, v [B, Hkv, m, ·], no autograd.

    "full" and "diag" (square causal) through ``exact_lse`` (SDPA's flash kernel on CPU
    float32 / half and CUDA half, chunked torch otherwise); "mask" (a causal block whose
    queries start ``q_first - k_first`` keys after its keys) by chunks with an explicit mask.
    """
    if mode != "mask":
        return exact_lse(q, k, v, scale=scale, is_causal=mode == "diag")
    Hq, Hkv = q.shape[1], k.shape[1]
    G, n, m = Hq // Hkv, q.shape[2], k.shape[2]
    qf = fold_groups(q, Hkv)
    qpos = _positions(q_first, n, G, q.device)
    kpos = k_first + torch.arange(m, device=q.device)
    outs, lses = [], []
    for r0 in range(0, qf.shape[2], _CHUNK):
        mask = kpos <= qpos[r0:r0 + _CHUNK, None]
        o, s = partial_attention(qf[:, :, r0:r0 + _CHUNK], k, v, scale=scale, mask=mask)
        outs.append(o)
        lses.append(s)
    return unfold_groups(torch.cat(outs, 2), Hq), unfold_groups(torch.cat(lses, 2), Hq)


def _block_backward(q, k, v, out, lse, dout, dlse, *, scale, mode, q_first, k_first):
    """Gradients (dq, dk, dv) of one block given the merged ``out``, ``lse`` of the query rows.

    FlashAttention's backward: p = exp(s - lse) are the final attention
    weights, ``ds = p (dout·vᵀ - Σ dout∘out + dlse)``.
    """
    acc = accumulation_dtype(q.dtype)
    B, Hq, n, _ = q.shape
    Hkv, m = k.shape[1], k.shape[2]
    G = Hq // Hkv
    qf, of, dof = (fold_groups(x, Hkv).to(acc) for x in (q, out, dout))
    lsef, dlsef = lse.reshape(B, Hkv, G * n), dlse.reshape(B, Hkv, G * n).to(acc)
    lsef = torch.where(torch.isfinite(lsef), lsef, torch.zeros_like(lsef))
    delta = (dof * of).sum(-1) - dlsef
    kf, vf = k.to(acc), v.to(acc)
    masked = mode != "full"
    if masked:
        qpos = _positions(q_first, n, G, q.device)
        kpos = k_first + torch.arange(m, device=q.device)
    dq = torch.empty_like(qf)
    dk, dv = torch.zeros_like(kf), torch.zeros_like(vf)
    for r0 in range(0, G * n, _CHUNK):
        rows = slice(r0, r0 + _CHUNK)
        s = torch.matmul(qf[:, :, rows], kf.transpose(-1, -2)) * scale
        if masked:
            s = s.masked_fill(kpos > qpos[rows, None], float("-inf"))
        p = torch.exp(s - lsef[:, :, rows, None])
        dv += torch.matmul(p.transpose(-1, -2), dof[:, :, rows])
        ds = p * (torch.matmul(dof[:, :, rows], vf.transpose(-1, -2)) - delta[:, :, rows, None])
        dq[:, :, rows] = torch.matmul(ds, kf) * scale
        dk += torch.matmul(ds.transpose(-1, -2), qf[:, :, rows]) * scale
    return unfold_groups(dq, Hq), dk, dv


def _pairs(layout: Layout, me: int, src: int, shift: int, causal: bool):
    for qs in layout[me][0]:
        for ks in layout[src][1]:
            mode = _mode(qs, ks, shift, causal)
            if mode != "skip":
                yield qs, ks, mode


def _rows(seg: Segment) -> tuple[slice, slice, slice]:
    return (slice(None), slice(None), slice(seg.offset, seg.offset + seg.length))


class _Ring(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token, q, k, v, layout, shift, causal, scale, group):
        P, me = group_size(group), group_rank(group)
        acc = accumulation_dtype(q.dtype)
        out = q.new_zeros(*q.shape[:3], v.shape[-1], dtype=acc)
        lse = q.new_full(q.shape[:3], float("-inf"), dtype=acc)
        shapes = [k.shape, v.shape]
        kv = pack([k, v], k.dtype)
        for step in range(P):
            src = (me - step) % P
            handle = start_shift(kv, group) if step < P - 1 else None
            kc, vc = unpack(kv, shapes)
            for qs, ks, mode in _pairs(layout, me, src, shift, causal):
                qr, kr = _rows(qs), _rows(ks)
                part = _block_forward(q[qr], kc[kr], vc[kr], scale=scale, mode=mode,
                                      q_first=qs.start + shift, k_first=ks.start)
                out[qr], lse[qr] = merge_partials(out[qr], lse[qr], *part)
            if handle is not None:
                kv = handle.wait()
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (layout, shift, causal, scale, group)
        return out, lse, token.clone()

    @staticmethod
    def backward(ctx, dout, dlse, dtoken):
        q, k, v, out, lse = ctx.saved_tensors
        layout, shift, causal, scale, group = ctx.args
        P, me = group_size(group), group_rank(group)
        acc = accumulation_dtype(q.dtype)
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        dk = torch.zeros(k.shape, dtype=acc, device=q.device)
        dv = torch.zeros(v.shape, dtype=acc, device=q.device)
        shapes = [k.shape, v.shape]
        kv = pack([k, v], k.dtype)
        for step in range(P):
            src = (me - step) % P
            handle = start_shift(kv, group) if step < P - 1 else None
            kc, vc = unpack(kv, shapes)
            for qs, ks, mode in _pairs(layout, me, src, shift, causal):
                qr, kr = _rows(qs), _rows(ks)
                gq, gk, gv = _block_backward(
                    q[qr], kc[kr], vc[kr], out[qr], lse[qr], dout[qr], dlse[qr], scale=scale,
                    mode=mode, q_first=qs.start + shift, k_first=ks.start)
                dq[qr] += gq
                dk[kr] += gk
                dv[kr] += gv
            # The key gradients travel with their keys; the P-th shift brings them home.
            dk, dv = unpack(_shift(pack([dk, dv], acc), 1, group), shapes)
            if handle is not None:
                kv = handle.wait()
        return (dtoken, dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None,
                None)


def ring_attention(q, k, v, *, is_causal: bool, scale: float, group=None):
    """Exact attention of this rank's query shard over the whole sharded sequence.

    Parameters
    ----------
    q : [B, Hq, N/P, D], k : [B, Hkv, M/P, D], v : [B, Hkv, M/P, Dv]: this
        rank's contiguous shards (validated by the caller); causal aligned
        bottom-right over the whole sequence as in ``ks.attention``.

    Returns
    -------
    (out [B, Hq, N/P, Dv], lse [B, Hq, N/P]) in the accumulation dtype;
    differentiable in q, k and v.
    """
    P = group_size(group)
    n, m = q.shape[2], k.shape[2]
    shift = P * (m - n)
    if is_causal and n == m and P > 1 and n % 2 == 0:
        c = n // 2
        held, wanted = contiguous_chunks(P), zigzag_chunks(P)
        qz, kz, vz = deal_chunks([q, k, v], held, wanted, c, group)
        out, lse = _chained(_Ring, qz, kz, vz, zigzag_layout(P, c), 0, True, scale, group)
        out, lse = deal_chunks([out, lse], wanted, held, c, group)
        return out, lse
    return tuple(_chained(_Ring, q, k, v, contiguous_layout(P, n, m), shift, is_causal, scale,
                          group))
