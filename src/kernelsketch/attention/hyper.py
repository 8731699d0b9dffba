"""HyperAttention (Han, Jayaram, Karbasi, Mirrokni, Woodruff, Zandieh; arXiv 2310.05869).

Non-causal approximation of softmax attention in near-linear time:

1. **sortLSH** (Alg. 1): hash queries and keys with an angular LSH of
   ``lsh_bits`` bits, Gray-code bucket order (sketch/lsh.py), sort both by
   bucket and split the sorted orders into blocks; query block i attends
   exactly to key block i (the block-diagonal mask of the sorted order).
   With ``hash_rounds > 1`` the union of the blocks of several independent
   hashes is covered, each pair counted once.
2. **Sampling** (Alg. 2/3): the keys outside a query's blocks are estimated
   from ``s`` sampled keys with weights ``1 / (s p_j)`` (uniform:
   ``p_j = 1/m``; optionally ``p_j`` ∝ ‖v_j‖ mixed with uniform, the
   importance distribution of KDEformer), masking the sampled pairs that the
   blocks already cover so nothing is counted twice. Both the normaliser
   D = A·1 and the product AV are estimated (the sampled part is unbiased).
3. **Merge** the two partial attentions by log-sum-exp (attention/merge.py).
4. **Causal** (§4): the shared recursion of attention/causal.py, with this
   approximation on the off-diagonal blocks and exact attention below
   ``min_seq_len``.

Sequences shorter than ``min_seq_len`` (keys, non-causal; or the whole
sequence, causal) use exact attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_choice, check_float, check_int
from ..sketch.lsh import AngularLSH
from ..sketch.sampling import importance_sample, uniform_sample
from .api import MethodConfig, MethodSpec
from .causal import approximate_or_exact
from .exact import partial_attention
from .gqa import fold_groups, gather_rows, unfold_groups
from .merge import accumulation_dtype, merge_many
from .sortlsh import block_diagonal_attention, covered_by_blocks, fused_sorted_attention


@dataclass(frozen=True)
class HyperConfig(MethodConfig):
    """Configuration of HyperAttention (defaults: the paper's).

    lsh_bits : bits of the angular LSH (2**lsh_bits buckets), 1..30.
    block_size : keys per block of the sorted block-diagonal part.
    sample_size : keys sampled for the residual (all keys, weight 1, once
        ``sample_size`` reaches the key count; 0 disables sampling).
    min_seq_len : exact attention at or below this length (keys for
        non-causal; the recursion's leaf size for causal).
    hash_rounds : independent LSH rounds whose blocks are united.
    sampling : "uniform" (the paper) or "value_norm" (p_j ∝ ‖v_j‖, mixed
        half-and-half with uniform so every key keeps probability ≥ 1/(2m)).
    samples_per_key : extra samples proportional to the key count: the sample
        size is ``sample_size + ceil(samples_per_key * m)``.
    """

    lsh_bits: int = 7
    block_size: int = 256
    sample_size: int = 256
    min_seq_len: int = 4096
    hash_rounds: int = 1
    sampling: str = "uniform"
    samples_per_key: float = 0.0

    def __post_init__(self) -> None:
        check_int("lsh_bits", self.lsh_bits, min=1, max=30)
        check_int("block_size", self.block_size, min=1)
        check_int("sample_size", self.sample_size, min=0)
        check_int("min_seq_len", self.min_seq_len, min=0)
        check_int("hash_rounds", self.hash_rounds, min=1, max=16)
        check_choice("sampling", self.sampling, ("uniform", "value_norm"))
        check_float("samples_per_key", self.samples_per_key, min=0.0, max=1.0)

    def num_samples(self, num_keys: int) -> int:
        """Sample size used for ``num_keys`` keys."""
        return self.sample_size + math.ceil(self.samples_per_key * num_keys)

    @classmethod
    def full_budget(cls, seq_len: int) -> HyperConfig:
        """A config whose blocks cover every pair at this length (equals exact attention)."""
        return cls(block_size=max(seq_len, 1), sample_size=0, min_seq_len=0)


def _draw_samples(k, v, config, generator):
    """Sampled key indices [B, Hkv, s] and their log-weights, or None without sampling."""
    B, Hkv, M = k.shape[:3]
    num_samples = config.num_samples(M)
    if num_samples == 0:
        return None
    if num_samples >= M:
        return (torch.arange(M, device=k.device).expand(B, Hkv, M),
                torch.zeros(B, Hkv, M, device=k.device))
    if config.sampling == "uniform":
        idx, w = uniform_sample(M, num_samples, batch_shape=(B, Hkv), device=k.device,
                                generator=generator)
    else:
        vf = v.detach().to(accumulation_dtype(v.dtype))
        # p_j depends on the norms' ratios only: divide by max|v| so ‖v_j‖ never overflows.
        vf = vf / vf.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
        norms = torch.linalg.vector_norm(vf, dim=-1)
        probs = 0.5 / M + 0.5 * norms / norms.sum(-1, keepdim=True).clamp_min(1e-30)
        idx, w = importance_sample(probs, num_samples, generator=generator)
    return idx, w.log()


def fused_kernels_apply(q: torch.Tensor) -> bool:
    """True when the Triton kernels (forward and backward) run: CUDA half-precision inputs."""
    from .triton import triton_available

    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and triton_available()


def _use_fused(q, k, v, config) -> bool:
    """The fused kernels cover one hash round."""
    return config.hash_rounds == 1 and fused_kernels_apply(q)


def hyper_noncausal_fused(q, k, v, scale, config, generator):
    """The same function as :func:`hyper_noncausal` (one hash round) through the Triton kernels.

    Draws the hash and the samples exactly as the torch path does, so both
    give the same result for the same generator state. Differentiable w.r.t.
    q, k and v through the Triton backward (out and lse); the sampling
    weights are constants of the estimator. out is in v's dtype, lse float32.
    """
    Hq, D = q.shape[1], q.shape[3]
    Hkv, M = k.shape[1], k.shape[2]
    num_blocks = math.ceil(M / config.block_size)
    lsh = AngularLSH(D, config.lsh_bits, generator=generator).to(q.device)

    def draw_samples(covered, block_lse):
        return _draw_samples(k, v, config, generator) if num_blocks > 1 else None

    out, lse = fused_sorted_attention(fold_groups(q, Hkv), k, v, lsh, num_blocks, scale=scale,
                                      draw_samples=draw_samples)
    return unfold_groups(out, Hq), unfold_groups(lse, Hq)


def hyper_noncausal(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    config: HyperConfig,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-causal HyperAttention partial ``(out, lse)`` in the accumulation dtype.

    q [B, Hq, N, D], k [B, Hkv, M, D], v [B, Hkv, M, Dv]. The G = Hq/Hkv query
    heads sharing a key head are hashed and sorted together with that head's
    keys (GQA without copying keys). The returned lse estimates
    log Σ_j exp(q_i·k_j·scale) (unbiased in exp).
    """
    Hq, D = q.shape[1], q.shape[3]
    Hkv, M = k.shape[1], k.shape[2]
    qf = fold_groups(q, Hkv)
    num_blocks = math.ceil(M / config.block_size)
    covered = []  # block ids (queries, keys) of each hash round
    parts = []
    for _ in range(config.hash_rounds):
        lsh = AngularLSH(D, config.lsh_bits, generator=generator).to(q.device)
        out, lse, blk_q, blk_k = block_diagonal_attention(qf, k, v, lsh, num_blocks, scale=scale,
                                                          covered=covered)
        parts.append((out, lse))
        covered.append((blk_q, blk_k))

    samples = _draw_samples(k, v, config, generator) if num_blocks > 1 else None
    if samples is not None:
        idx, log_w = samples
        seen = covered_by_blocks(covered, idx)
        parts.append(partial_attention(qf, gather_rows(k, idx), gather_rows(v, idx), scale=scale,
                                       mask=~seen, key_log_weights=log_w))
    out, lse = merge_many(parts)
    return unfold_groups(out, Hq), unfold_groups(lse, Hq)


def hyper_forward(q, k, v, *, is_causal, scale, config, generator, need_lse):
    """Registry entry of HyperAttention (see :class:`HyperConfig`)."""
    noncausal = hyper_noncausal_fused if _use_fused(q, k, v, config) else hyper_noncausal
    return approximate_or_exact(
        q, k, v, is_causal=is_causal, scale=scale, min_seq_len=config.min_seq_len,
        noncausal=lambda qb, kb, vb, s: noncausal(qb, kb, vb, s, config, generator),
        need_lse=need_lse,
    )


METHOD = MethodSpec(
    name="hyper",
    forward=hyper_forward,
    config_cls=HyperConfig,
    summary="sortLSH block-diagonal + sampled residual, LSE merge, causal recursion",
    paper="HyperAttention, arXiv 2310.05869",
)
