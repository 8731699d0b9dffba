"""Independent float64 reference of the fused sortLSH kernels and their inputs.

:func:`naive_sorted_sampled` materialises, for every query row, the logits
of the keys of its sorted block and of the sampled keys outside that block
(with their log-weights) and takes one softmax over them: the function that
``fused_sorted_attention`` computes tile by tile. It shares no code with the
kernels or with the torch path of ``hyper``/``kde``.
"""

import math

import torch


def naive_sorted_sampled(qf, k, v, perm_q, perm_k, sample_idx, log_weights, sample_blocks, *,
                         q_block, k_block, scale):
    """(out, lse) in float64: qf [B, H, R, D], k [B, H, M, D], v [B, H, M, Dv]; the rest as
    in ``fused_sorted_attention``."""
    qf, k, v = qf.double(), k.double(), v.double()
    R, M = qf.shape[2], k.shape[2]
    # Block of every original row / key: its position in the sorted order, cut into blocks.
    row_blk = torch.empty_like(perm_q)
    row_blk.scatter_(2, perm_q, torch.arange(R, device=qf.device).expand_as(perm_q) // q_block)
    key_blk = torch.empty_like(perm_k)
    key_blk.scatter_(2, perm_k, torch.arange(M, device=qf.device).expand_as(perm_k) // k_block)
    s_blk = qf @ k.transpose(-1, -2) * scale  # [B, H, R, M]
    s_blk = s_blk.masked_fill(row_blk.unsqueeze(-1) != key_blk.unsqueeze(-2), -math.inf)
    ks = torch.gather(k, 2, sample_idx.unsqueeze(-1).expand(*sample_idx.shape, k.shape[-1]))
    vs = torch.gather(v, 2, sample_idx.unsqueeze(-1).expand(*sample_idx.shape, v.shape[-1]))
    s_smp = qf @ ks.transpose(-1, -2) * scale + log_weights.double().unsqueeze(-2)  # [B, H, R, S]
    s_smp = s_smp.masked_fill(row_blk.unsqueeze(-1) == sample_blocks.unsqueeze(-2), -math.inf)
    s = torch.cat([s_blk, s_smp], dim=-1)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.nan_to_num(torch.exp(s - lse.unsqueeze(-1)), nan=0.0)
    return p @ torch.cat([v, vs], dim=2), lse


def estimator_inputs(B, H, R, M, D, Dv, S, num_blocks, *, dtype, device, seed, dup=False):
    """q, k, v (requires_grad) and a hash / sample set of the shapes the estimators draw:
    random permutations, blocks of ceil(len / num_blocks), S sampled keys with replacement
    (``dup``: from a few keys only, so that keys repeat) and log-weights log(M / S)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, R, D, generator=gen, dtype=torch.float64) * 0.5
    k = torch.randn(B, H, M, D, generator=gen, dtype=torch.float64) * 0.5
    v = torch.randn(B, H, M, Dv, generator=gen, dtype=torch.float64)
    perm_q = torch.stack([torch.randperm(R, generator=gen) for _ in range(B * H)]).view(B, H, R)
    perm_k = torch.stack([torch.randperm(M, generator=gen) for _ in range(B * H)]).view(B, H, M)
    q_block, k_block = math.ceil(R / num_blocks), math.ceil(M / num_blocks)
    key_blk = torch.empty_like(perm_k)
    key_blk.scatter_(2, perm_k, torch.arange(M).expand_as(perm_k) // k_block)
    idx = torch.randint(0, min(M, 3) if dup else M, (B, H, S), generator=gen)
    log_w = torch.full((B, H, S), math.log(M / max(S, 1)), dtype=torch.float32)
    blocks = torch.gather(key_blk, 2, idx)
    qkv = [t.to(dtype).to(device).requires_grad_(True) for t in (q, k, v)]
    consts = [t.to(device) for t in (perm_q, perm_k, idx, log_w, blocks)]
    return qkv, consts, {"q_block": q_block, "k_block": k_block}
