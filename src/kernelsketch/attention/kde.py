"""KDEformer (Zandieh, Han, Daliri, Karbasi; arXiv 2302.02451).

Att = D⁻¹AV with A = exp(QKᵀ·scale). KDEformer's two observations:

* the normaliser D_i = Σ_j exp(⟨q_i, k_j⟩·scale) is a kernel density estimate
  at q_i, and
* D⁻¹A·V is a matrix product that can be approximated by sampling columns of
  D⁻¹A / rows of V (approximate matrix multiplication, AMM), which gives the
  spectral-norm bound ‖Att̃ − Att‖₂ ≤ ε‖D⁻¹A‖₂‖V‖₂ when the sampling
  probabilities dominate the AMM distribution
  p_j ∝ ‖(D⁻¹A)_{:,j}‖²/‖D⁻¹A‖_F² + ‖v_j‖²/‖V‖_F²   (the paper's Lemma/Thm. on AMM).

This implementation follows the paper's practical algorithm (§4):

1. sortLSH blocks (attention/sortlsh.py, shared with HyperAttention): the
   entries of A that collide under angular LSH are computed exactly.
2. A KDE of the rows: D̂ = exact block part + a uniform sample of the other keys.
3. A weighted-exponential KDE of the columns: ‖(D⁻¹A)_{:,j}‖² over the pairs
   not covered by the blocks, Σ_i exp(2 s_ij)/D̂_i², estimated from a uniform
   sample of query rows (all in the log domain).
4. Keys are sampled with the AMM distribution above, where V has a ones column
   appended (so numerator D⁻¹AV and denominator D are estimated from the same
   samples and every key keeps p_j > 0); the sampled part is reweighted by
   1/(s p_j), masked where the blocks already count the pair, and merged with
   the block part by log-sum-exp. The denominator is a sum of positive terms
   including at least one exact key per row, so it is never ≤ 0, and every
   step runs on logits minus row maxima (no overflow for logits of ±1e4 or in
   bf16/fp16).

Causal attention uses the shared recursion (attention/causal.py); exact
attention below ``min_seq_len``. On CUDA half-precision inputs the blocks and
the sampled keys run through HyperAttention's fused Triton kernels (forward
and backward, attention/triton/hyper_*.py); elsewhere through torch autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_int
from ..sketch.lsh import AngularLSH
from ..sketch.sampling import importance_sample, uniform_sample
from .api import MethodConfig, MethodSpec
from .causal import approximate_or_exact
from .exact import partial_attention
from .gqa import fold_groups, gather_rows, unfold_groups
from .hyper import fused_kernels_apply
from .merge import merge_partials
from .sortlsh import block_diagonal_attention, covered_by_blocks, fused_sorted_attention


@dataclass(frozen=True)
class KDEConfig(MethodConfig):
    """Configuration of KDEformer.

    lsh_bits : bits of the angular LSH, 1..30.
    block_size : keys per sorted block (the exact, LSH-colliding part).
    sample_size : keys sampled with the AMM distribution (all keys, weight 1,
        once it reaches the key count; 0 keeps only the blocks).
    kde_samples : uniform samples used by the two density estimates (keys for
        D̂, query rows for the column norms).
    min_seq_len : exact attention at or below this length; 0 forces the
        approximation at any length.
    """

    lsh_bits: int = 7
    block_size: int = 256
    sample_size: int = 256
    kde_samples: int = 256
    min_seq_len: int = 4096

    def __post_init__(self) -> None:
        check_int("lsh_bits", self.lsh_bits, min=1, max=30)
        check_int("block_size", self.block_size, min=1)
        check_int("sample_size", self.sample_size, min=0)
        check_int("kde_samples", self.kde_samples, min=1)
        check_int("min_seq_len", self.min_seq_len, min=0)

    @classmethod
    def full_budget(cls, seq_len: int) -> KDEConfig:
        """A config whose blocks cover every pair at this length (equals exact attention)."""
        return cls(block_size=max(seq_len, 1), sample_size=0, min_seq_len=0)


def _masked_lse(q, k, scale, keep, log_w=None):
    """log Σ_j keep_ij w_j exp(q_i·k_j·scale) over the given keys, [..., R]."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if log_w is not None:
        s = s + log_w.unsqueeze(-2)
    return torch.logsumexp(s.masked_fill(~keep, float("-inf")), dim=-1)


@torch.no_grad()
def amm_probabilities(qf, k, v, lse_blocks, covered, scale, config, generator):
    """KDEformer's sampling distribution over keys, [B, H, M] (unnormalised, > 0).

    ½·ĉ_j/Σĉ + ½·(‖v_j‖² + 1)/Σ(‖v‖² + 1), with ĉ_j the estimated squared norm of
    column j of D⁻¹A restricted to pairs outside the blocks. The distribution
    only chooses which keys to sample; the estimator is unbiased for any such
    choice, so it carries no gradient.
    """
    B, H, R, _ = qf.shape
    M = k.shape[2]
    acc = lse_blocks.dtype
    qa, ka = qf.to(acc), k.to(acc)
    # Row KDE: D̂_i = blocks (exact) + uniformly sampled other keys.
    idx, w = uniform_sample(M, min(config.kde_samples, M), batch_shape=(B, H), device=k.device,
                            generator=generator)
    keep = ~covered_by_blocks(covered, idx)
    lse_rest = _masked_lse(qa, gather_rows(ka, idx), scale, keep, w.log().to(acc))
    log_d = torch.logaddexp(lse_blocks, lse_rest)
    # Column KDE with kernel exp(2 s) and weights 1/D̂²: uniformly sampled query rows.
    rows, _ = uniform_sample(R, min(config.kde_samples, R), batch_shape=(B, H),
                             device=k.device, generator=generator)
    q_rows = gather_rows(qa, rows)
    s = 2 * torch.matmul(q_rows, ka.transpose(-1, -2)) * scale  # [B, H, S_q, M]
    s = s - 2 * torch.gather(log_d, 2, rows).unsqueeze(-1)
    blk_q, blk_k = covered[0]
    same_block = torch.gather(blk_q, 2, rows).unsqueeze(-1) == blk_k.unsqueeze(-2)
    log_c = torch.logsumexp(s.masked_fill(same_block, float("-inf")), dim=-2)
    col = torch.nan_to_num(torch.softmax(log_c, dim=-1), nan=0.0)
    # Row norms of [V, 1] (the ones column), all divided by c = max(1, max|v|)
    # so that squaring never overflows: (‖v_j‖² + 1)/c² = ‖v_j/c‖² + 1/c².
    va = v.to(acc)
    c = va.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1.0)
    vnorm = torch.linalg.vector_norm(va / c, dim=-1) ** 2 + c.squeeze(-1) ** -2
    return 0.5 * col + 0.5 * vnorm / vnorm.sum(-1, keepdim=True)


def _draw_samples(qf, k, v, num_blocks, covered, block_lse, scale, config, generator):
    """Sampled keys [B, H, s] and their log-weights (AMM distribution), or None.

    None with a single block (it covers every pair) or ``sample_size=0``; every
    key with weight 1 once ``sample_size`` reaches the key count. ``block_lse()``
    gives the blocks' lse, needed only by the distribution.
    """
    B, H, M = k.shape[:3]
    s = config.sample_size
    if num_blocks == 1 or s == 0:
        return None
    if s >= M:
        return (torch.arange(M, device=k.device).expand(B, H, M),
                torch.zeros(B, H, M, device=k.device))
    probs = amm_probabilities(qf, k, v, block_lse(), covered, scale, config, generator)
    idx, w = importance_sample(probs, s, generator=generator)
    return idx, w.log()


def kde_noncausal(q, k, v, scale, config, generator):
    """Non-causal KDEformer partial ``(out, lse)`` in the accumulation dtype.

    q [B, Hq, N, D], k [B, Hkv, M, D], v [B, Hkv, M, Dv] (GQA groups folded into
    query rows). exp(lse) is an unbiased estimate of D_i = Σ_j exp(q_i·k_j·scale).
    """
    Hq, D = q.shape[1], q.shape[3]
    Hkv, M = k.shape[1], k.shape[2]
    qf = fold_groups(q, Hkv)
    num_blocks = math.ceil(M / config.block_size)
    lsh = AngularLSH(D, config.lsh_bits, generator=generator).to(q.device)
    out, lse, blk_q, blk_k = block_diagonal_attention(qf, k, v, lsh, num_blocks, scale=scale)
    covered = [(blk_q, blk_k)]
    samples = _draw_samples(qf, k, v, num_blocks, covered, lambda: lse, scale, config, generator)
    if samples is not None:
        idx, log_w = samples
        part = partial_attention(qf, gather_rows(k, idx), gather_rows(v, idx), scale=scale,
                                 mask=~covered_by_blocks(covered, idx), key_log_weights=log_w)
        out, lse = merge_partials(out, lse, *part)
    return unfold_groups(out, Hq), unfold_groups(lse, Hq)


def kde_noncausal_fused(q, k, v, scale, config, generator):
    """The same function as :func:`kde_noncausal` through HyperAttention's Triton kernels.

    Draws the hash and the samples as the torch path does (the blocks' lse
    that the AMM distribution needs comes from one extra block-only launch),
    so both agree for the same generator state. Differentiable w.r.t. q, k
    and v through the Triton backward; out in v's dtype, lse float32.
    """
    Hq, D = q.shape[1], q.shape[3]
    Hkv, M = k.shape[1], k.shape[2]
    qf = fold_groups(q, Hkv)
    num_blocks = math.ceil(M / config.block_size)
    lsh = AngularLSH(D, config.lsh_bits, generator=generator).to(q.device)

    def draw_samples(covered, block_lse):
        return _draw_samples(qf, k, v, num_blocks, covered, block_lse, scale, config, generator)

    out, lse = fused_sorted_attention(qf, k, v, lsh, num_blocks, scale=scale,
                                      draw_samples=draw_samples)
    return unfold_groups(out, Hq), unfold_groups(lse, Hq)


def kde_forward(q, k, v, *, is_causal, scale, config, generator, need_lse):
    """Registry entry of KDEformer (see :class:`KDEConfig`)."""
    noncausal = kde_noncausal_fused if fused_kernels_apply(q) else kde_noncausal
    return approximate_or_exact(
        q, k, v, is_causal=is_causal, scale=scale, min_seq_len=config.min_seq_len,
        noncausal=lambda qb, kb, vb, s: noncausal(qb, kb, vb, s, config, generator),
        need_lse=need_lse,
    )


METHOD = MethodSpec(
    name="kde",
    forward=kde_forward,
    config_cls=KDEConfig,
    summary="LSH-colliding blocks exact + AMM importance sampling from KDE estimates",
    paper="KDEformer, arXiv 2302.02451",
)
