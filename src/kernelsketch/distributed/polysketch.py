"""PolySketch attention of sequence shards (``method="polysketch"``).

PolySketch attention is linear in the keys: with ``Φ = φ ⊗ φ`` the r²
features of the sketch, ``num_i = Φ(q_i) Σ_j Φ(k_j) [v_j, 1]`` over the keys
it sees through the sketch, plus exact polynomial weights inside the query's
block of the global grid of ``block_size`` (PolySketchFormer §4). So:

* non-causal: one all-reduce of the state ``Σ_j Φ(k_j)ᵀ [v_j, 1]``
  ([B, Hkv, r², Dv + 1]);
* causal: an exclusive prefix scan of the per-rank states (all-gather of two
  states per rank: keys in the rank's earlier blocks and in its last block,
  which may be the next rank's first block), then the single-process block
  algorithm on the local shard. When the shard length is not a multiple of
  ``block_size``, the keys of the block straddling the shard start (fewer
  than ``block_size``) come from the preceding ranks.

Every rank draws the same sketch from ``generator``, so the result equals
``ks.attention(method="polysketch")`` on the whole sequence up to float
rounding, in O(P r² Dv) bytes per rank. Theory: docs/distributed.md.
"""

from __future__ import annotations

import math

import torch

from ..attn.common.merge import accumulation_dtype
from ..attn.polysketch.config import LEARNED
from ..attn.polysketch.features import PolySketchFeatures, self_tensor
from ..attn.polysketch.naive import _causal_torch, _quadratic_torch, use_quadratic
from ..attn.polysketch.polynomial import layer_norm_qk, normalize_output
from .collectives import all_gather, all_reduce_sum, group_rank, group_size, preceding_rows

__all__ = ["polysketch_context_parallel"]


def _ones_column(v: torch.Tensor) -> torch.Tensor:
    return torch.cat((v, torch.ones_like(v[..., :1])), dim=-1)


def polysketch_context_parallel(q, k, v, *, is_causal, scale, config, generator, group=None):
    """This rank's rows of PolySketch attention over the sharded sequence.

    q [B, Hq, n, D], k [B, Hkv, m, D], v [B, Hkv, m, Dv] (contiguous shards,
    validated by the caller; causal needs n == m). Returns ``(out, lse)``
    [B, Hq, n, Dv], [B, Hq, n] in the accumulation dtype, differentiable.
    """
    if config.sketch in LEARNED:
        raise ValueError(
            f"sketch={config.sketch!r} has trainable parameters: use "
            "kernelsketch.attn.polysketch.PolySketchAttention, not the functional form"
        )
    P, me = group_size(group), group_rank(group)
    features = PolySketchFeatures(q.shape[-1], config, generator=generator).to(q.device)
    if config.normalize:
        q, k = layer_norm_qk(q, k)
    acc = accumulation_dtype(q.dtype)
    B, Hq, n, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[-1]
    G = Hq // Hkv
    root = math.sqrt(scale)
    qs, ks, v = q.to(acc) * root, k.to(acc) * root, v.to(acc)
    fq, fk = features(qs), features(ks)
    qg, fqg = qs.reshape(B, Hkv, G, n, D), fq.reshape(B, Hkv, G, n, -1)
    if not is_causal:
        state = all_reduce_sum(torch.matmul(self_tensor(fk).transpose(-1, -2), _ones_column(v)),
                               group)
        out = torch.matmul(self_tensor(fqg), state.unsqueeze(2))
        num, den = out[..., :-1], out[..., -1]
    else:
        num, den = _causal(qg, ks, v, fqg, fk, features, config, P, me, group)
    return normalize_output(num.reshape(B, Hq, n, Dv), den.reshape(B, Hq, n), True)


def _causal(qg, ks, v, fqg, fk, features, config, P, me, group):
    n, b = ks.shape[2], config.block_size
    start = me * n
    first_block = [r * n // b for r in range(P)]
    last_block = [(r * n + n - 1) // b for r in range(P)]
    # Two states per rank: keys in blocks before its last block, and keys in its last block.
    in_last = (start + torch.arange(n, device=ks.device)) // b == last_block[me]
    phi, vp = self_tensor(fk), _ones_column(v)
    states = torch.stack((
        torch.matmul(phi[:, :, ~in_last].transpose(-1, -2), vp[:, :, ~in_last]),
        torch.matmul(phi[:, :, in_last].transpose(-1, -2), vp[:, :, in_last]),
    ))
    every = all_gather(states, group)  # [P, 2, B, Hkv, r², Dv + 1]
    # Exclusive scan: the keys of blocks before this rank's first block. Weights (not slices)
    # keep the gathered states in every rank's graph, so every rank runs the backward.
    before = torch.tensor([r < me for r in range(P)], dtype=every.dtype, device=every.device)
    done = torch.tensor([r < me and last_block[r] < first_block[me] for r in range(P)],
                        dtype=every.dtype, device=every.device)
    shape = (P,) + (1,) * (every.dim() - 2)
    prefix = (every[:, 0] * before.view(shape)).sum(0) + (every[:, 1] * done.view(shape)).sum(0)
    # Keys of this rank's first block held by preceding ranks (fewer than block_size).
    halo_len = max(r * n % b for r in range(P))
    h = start % b
    D = ks.shape[-1]
    halo = preceding_rows(torch.cat((ks, v), dim=-1), halo_len, group)[:, :, halo_len - h:]
    keys, vals = torch.cat((halo[..., :D], ks), 2), torch.cat((halo[..., D:], v), 2)
    fkeys = torch.cat((features(halo[..., :D]), fk), 2)
    r = fk.shape[-1]
    if use_quadratic(n, keys.shape[2], r, D, v.shape[-1]):
        num, den = _quadratic_torch(qg, keys, vals, fqg, fkeys, degree=config.degree,
                                    block_size=b, exact_local=config.exact_local, is_causal=True)
    else:
        num, den = _causal_torch(qg, keys, vals, fqg, fkeys, degree=config.degree, block_size=b,
                                 exact_local=config.exact_local)
    earlier = torch.matmul(self_tensor(fqg), prefix.unsqueeze(2))
    return num + earlier[..., :-1], den + earlier[..., -1]
