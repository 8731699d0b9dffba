"""Automatic sample size of the sortLSH methods from a target normalised spectral error.

:func:`predict_sample_size` estimates, on ``rows`` uniformly sampled query rows
per head, the normalised spectral error ‖Õ − D⁻¹AV‖₂ / (‖D⁻¹A‖₂‖V‖₂) of those
rows (the quantity :func:`~kernelsketch.attn.common.metrics.spectral_error`
measures with ``num_rows``) that HyperAttention or KDEformer reaches with s
samples, and returns the smallest s that meets a target. Theory: docs/hyper.md
("Automatic budget").

For the sampled rows everything the estimator does is reproduced except the
attention of all other rows: the exact rows of D⁻¹A (one [rows, M] product per
head), the causal recursion's levels, each level's exact keys, LSH blocks (a
hash of the chooser's own) and sampling distribution. Given those, a sampled
row's estimate is

    Õ_i = (N_i^exact + Σ_ℓ Σ_t w_t P_{i j_t} v_{j_t}) / (Z_i^exact + Σ_ℓ Σ_t w_t P_{i j_t}),

the sums over level ℓ's s samples j_t outside row i's block (P the exact
attention rows, so the exact parts are what the samples leave out). The
error of s samples is simulated by drawing them (Monte Carlo, not a
linearisation: a heavy key the blocks miss makes Õ_i far from linear in the
samples), and s is found by secant steps on log error against log s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...sketch.lsh import AngularLSH
from ...sketch.sampling import importance_sample
from .causal import causal_levels
from .gqa import fold_groups
from .merge import accumulation_dtype
from .sortlsh.blocks import lsh_buckets, sorted_blocks

# probabilities(q_level, k_rest, v_rest, blk_q, blk_k, k_exact) -> [B', H, m] (any positive
# scale) or None for uniform sampling; q_level [B', H, G*h, D] folded level queries, the
# others as in the estimator.
Probabilities = Callable[..., torch.Tensor | None]


@dataclass(frozen=True)
class BudgetChoice:
    """The result of an automatic budget.

    config : the method's config with the chosen ``sample_size``.
    estimated_error : predicted normalised spectral error (mean over heads) at that size.
    target : the requested error; rows : query rows per head the estimate used.
    """

    config: object
    estimated_error: float
    target: float
    rows: int


def _levels(N: int, M: int, min_seq_len: int, is_causal: bool) -> list[tuple[int, int]]:
    """(blocks, half) of every approximated level; non-causal: one level (1, M)."""
    if not is_causal:
        return [(1, M)] if M > min_seq_len else []
    levels, leaf = causal_levels(N, min_seq_len)
    n_pad = leaf * 2**levels
    out = []
    for level in range(levels, 0, -1):
        blocks = 2 ** (level - 1)
        half = n_pad // (2 * blocks)
        if half > min_seq_len:
            out.append((blocks, half))
    return out


def _spectral_norms(P: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """Largest singular value of each [R, M] matrix of P [B, H, R, M], by batched power
    iteration on P Pᵀ (R x R) from a fixed start (as metrics.spectral_error)."""
    gram = P @ P.transpose(-1, -2)
    x = torch.ones(*P.shape[:-1], 1, dtype=P.dtype, device=P.device)
    lam = torch.zeros(P.shape[:2], dtype=P.dtype, device=P.device)
    for _ in range(iters):
        y = gram @ x
        lam = torch.linalg.vector_norm(y, dim=(-2, -1))
        x = y / lam.clamp_min(1e-300)[..., None, None]
    return lam.sqrt()


@dataclass
class _Level:
    first: int  # exact keys at the start of each key block
    m: int  # the estimator's keys per key block
    key0: torch.Tensor  # [R] first key of each sampled row's key block
    br: torch.Tensor  # [B, R] the row's batch entry of the level (b * blocks + t)
    second: torch.Tensor  # [R] whether the row takes part (second half of its block)
    row_block: torch.Tensor  # [B, Hq, R] the row's LSH block
    key_block: torch.Tensor  # [B*blocks, Hkv, m] the keys' LSH blocks
    probs: torch.Tensor  # [B*blocks, Hkv, m] the sampling distribution
    v_full: torch.Tensor  # [B, Hq, M, Dv] the values of every head


@torch.no_grad()
def _setup(q, k, v, *, scale, is_causal, config, probabilities, rows, generator):
    """Exact rows and the per-level structure of the sampled rows (see the module docstring)."""
    B, Hq, N, D = q.shape
    Hkv, M, Dv = k.shape[1], k.shape[2], v.shape[-1]
    G = Hq // Hkv
    acc = accumulation_dtype(q.dtype)
    dev = q.device
    pos = torch.randperm(N, generator=generator, device="cpu")[:min(rows, N)].sort().values
    pos = pos.to(dev)
    R = pos.numel()
    vv = v.to(acc).repeat_interleave(G, dim=1)
    logits = q[:, :, pos].to(acc) @ k.to(acc).repeat_interleave(G, dim=1).transpose(-1, -2)
    logits = logits * scale
    if is_causal:
        future = torch.arange(M, device=dev) > pos.unsqueeze(-1) + (M - N)
        logits = logits.masked_fill(future, float("-inf"))
    P = torch.softmax(logits, dim=-1)  # [B, Hq, R, M]
    O = P @ vv
    v_norm = torch.linalg.eigvalsh(v.to(acc).transpose(-1, -2) @ v.to(acc))[..., -1].sqrt()
    denom = _spectral_norms(P) * v_norm.repeat_interleave(G, dim=1)
    qf = fold_groups(q, Hkv)
    levels = []
    outside = torch.zeros_like(P, dtype=torch.bool)  # pairs left to the samples
    for blocks, half in _levels(N, M, config.min_seq_len, is_causal):
        first = min(config.sink, half)
        last = min(config.window if is_causal else 0, half - first)
        m = half - first - last
        if m <= 0:
            continue
        if is_causal:  # the level's folded queries and keys, as the recursion hands them over
            pad = 2 * blocks * half - N
            qp = F.pad(qf.reshape(B, Hkv, G, N, D), (0, 0, 0, pad))
            q_lvl = qp.reshape(B, Hkv, G, blocks, 2, half, D)[:, :, :, :, 1]
            q_lvl = q_lvl.permute(0, 3, 1, 2, 4, 5).reshape(B * blocks, Hkv, G * half, D)
            kp, vp = F.pad(k, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))
            k_lvl = kp.reshape(B, Hkv, blocks, 2, half, D)[:, :, :, 0].transpose(1, 2)
            v_lvl = vp.reshape(B, Hkv, blocks, 2, half, Dv)[:, :, :, 0].transpose(1, 2)
            k_lvl = k_lvl.reshape(B * blocks, Hkv, half, D)
            v_lvl = v_lvl.reshape(B * blocks, Hkv, half, Dv)
            t = pos // (2 * half)
            second = (pos // half) % 2 == 1
            row = pos % half
            key0 = t * 2 * half
        else:
            q_lvl, k_lvl, v_lvl = qf, k, v
            t, second, row, key0 = (torch.zeros_like(pos), torch.ones_like(pos, dtype=torch.bool),
                                    pos, torch.zeros_like(pos))
        k_rest, v_rest = k_lvl[:, :, first:half - last], v_lvl[:, :, first:half - last]
        nb = math.ceil(m / config.block_size)
        lsh = AngularLSH(D, config.lsh_bits, generator=generator).to(dev)
        _, blk_q, _ = sorted_blocks(lsh_buckets(lsh, q_lvl), nb)
        _, blk_k, _ = sorted_blocks(lsh_buckets(lsh, k_rest), nb)
        k_exact = None
        if first or last:
            k_exact = torch.cat((k_lvl[:, :, :first], k_lvl[:, :, half - last:]), dim=2)
        probs = probabilities(q_lvl, k_rest, v_rest, blk_q, blk_k, k_exact)
        if probs is None:
            probs = torch.ones(k_rest.shape[:3], dtype=acc, device=dev)
        br = torch.arange(B, device=dev).reshape(B, 1) * blocks + t.reshape(1, R)
        rows_in = (torch.arange(G, device=dev).reshape(G, 1) * (q_lvl.shape[2] // G)
                   + row.reshape(1, R))  # [G, R] folded rows of each group member
        row_block = torch.stack([blk_q[br, h // G, rows_in[h % G].expand(B, R)]
                                 for h in range(Hq)], dim=1)  # [B, Hq, R]
        # The pairs of this level the samples estimate: the row's key block minus the
        # exact keys minus the row's LSH block.
        kpos = key0.reshape(R, 1) + first + torch.arange(m, device=dev)  # [R, m]
        for h in range(Hq):
            est = (blk_k[br, h // G] != row_block[:, h].unsqueeze(-1)) & second.reshape(1, R, 1)
            outside[:, h].scatter_(2, kpos.clamp(max=M - 1).expand(B, R, m), est & (kpos < M))
        levels.append(_Level(first, m, key0, br, second, row_block, blk_k,
                             (probs / probs.sum(-1, keepdim=True)).to(acc), vv))
    # What the exact parts (leaves, exact levels and keys, LSH blocks) give every row.
    P_ex = P.masked_fill(outside, 0.0)
    return levels, P, O, P_ex @ vv, P_ex.sum(-1), denom


@torch.no_grad()
def _simulated_error(setup, s, generator) -> torch.Tensor:
    """The sampled rows' normalised spectral error [B, Hq] with s samples (one draw).

    Each level's draw is scattered into per-key weights (multiplicity x 1/(s p_j)) of its
    key blocks; a row takes its block's weights at its level's keys outside its LSH block,
    so one [rows, M] x [M, Dv] product per head gives every row's sampled numerator.
    """
    levels, P, O, num, den, denom = setup
    B, Hq, R, M = P.shape
    Hkv = levels[0].probs.shape[1]
    G = Hq // Hkv
    weights = torch.zeros(B, Hq, R, M, dtype=P.dtype, device=P.device)
    for lv in levels:
        if s >= lv.m:  # every key once with weight 1
            per_key = torch.ones(lv.probs.shape, dtype=P.dtype, device=P.device)
        else:
            idx, w = importance_sample(lv.probs, s, generator=generator)
            per_key = torch.zeros(lv.probs.shape, dtype=P.dtype, device=P.device)
            per_key.scatter_add_(2, idx, w.to(P.dtype))
        kpos = (lv.key0.reshape(R, 1) + lv.first + torch.arange(lv.m, device=P.device))
        inside = kpos < M
        for h in range(Hq):
            hk = h // G
            wr = per_key[lv.br, hk] * (lv.key_block[lv.br, hk] != lv.row_block[:, h, :, None])
            wr = wr * (lv.second.reshape(1, R, 1) & inside)
            weights[:, h].scatter_add_(2, kpos.clamp(max=M - 1).expand(B, R, lv.m), wr)
    pw = P * weights
    vv = levels[0].v_full
    est = (num + pw @ vv) / (den + pw.sum(-1)).clamp_min(1e-300).unsqueeze(-1)
    return torch.linalg.matrix_norm(est - O, ord=2) / denom.clamp_min(1e-300)


def predict_sample_size(q, k, v, *, scale, is_causal, config, probabilities, target, rows=256,
                        generator=None, draws=2, steps=5) -> tuple[int, float]:
    """Smallest sample size found whose simulated mean error (``draws`` draws) is <= ``target``
    (``steps`` secant steps in log-log from the config's size).

    Returns ``(s, estimate)``; ``config.sample_size`` and 0 when nothing is sampled.
    """
    setup = _setup(q, k, v, scale=scale, is_causal=is_causal, config=config,
                   probabilities=probabilities, rows=rows, generator=generator)
    levels = setup[0]
    if not levels:
        return config.sample_size, 0.0
    top = max(lv.m for lv in levels)

    def error(s):
        return sum(float(_simulated_error(setup, s, generator).mean())
                   for _ in range(draws)) / draws

    # Secant steps on log(error) vs log(s), aiming at 0.95 target, from the config's size
    # (the sampling error falls like 1/sqrt(s) once the blocks' misses are sampled).
    s = min(max(config.sample_size, 16), top)
    seen = {s: error(s)}
    slope = -0.5
    for _ in range(steps):
        e = seen[s]
        if e <= target and (e == 0 or target / e < 1.15):
            break
        nxt = min(max(round(s * (0.95 * target / e) ** (1 / slope)) if e > 0 else s // 2,
                      1), top)
        if nxt in seen:
            break
        seen[nxt] = 0.0 if nxt >= top else error(nxt)
        if seen[nxt] > 0 and e > 0 and seen[nxt] != e:
            slope = min(-0.1, max(-2.0, math.log(seen[nxt] / e) / math.log(nxt / s)))
        s = nxt
    met = [(n, e) for n, e in seen.items() if e <= 1.05 * target]
    if met:
        return min(met)
    n, e = min(seen.items(), key=lambda item: item[1])  # extrapolate from the best point
    return min(top, math.ceil(n * (e / target) ** (1 / -slope))), target
