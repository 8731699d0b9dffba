"""sortLSH blocks plus weighted key samples: Triton forward and backward behind one autograd Function.

The forward gathers the LSH-sorted queries, keys and values and the sampled
keys once, runs :func:`.kernels_fwd.hyper_fused_forward` and keeps those
copies with its (out, lse) for the backward kernels of :mod:`.kernels_bwd`.
Both outputs are differentiable (the causal recursion merges partial results
by their lse); the sampling log-weights, the permutations and the sample
indices are constants of the estimator and get no gradient.
"""

from __future__ import annotations

import torch

from ..gqa import gather_rows
from ..triton_utils import check_head_dims, pad_head
from .kernels_bwd import hyper_fused_backward
from .kernels_fwd import hyper_fused_forward


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[B, H, R, ...] -> [B*H, R, ...], contiguous."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]).contiguous()


class _SortedSampledAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qf, k, v, perm_q, perm_k, sample_idx, log_weights, sample_blocks,
                q_block, k_block, scale):
        B, Hkv, R, _ = qf.shape
        # Head dimensions padded to a multiple of 16 (zero columns, dropped from the results).
        sorted_and_sampled = [pad_head(_flat(gather_rows(x, p))) for x, p in
                              ((qf, perm_q), (k, perm_k), (v, perm_k), (k, sample_idx),
                               (v, sample_idx))]
        consts = (_flat(log_weights.float()), _flat(sample_blocks.to(torch.int32)),
                  _flat(perm_q), _flat(perm_k), _flat(sample_idx))
        out, lse = hyper_fused_forward(*sorted_and_sampled, *consts[:3], q_block=q_block,
                                       k_block=k_block, scale=scale)
        ctx.save_for_backward(out, lse, *sorted_and_sampled, *consts)
        ctx.shapes = (qf.shape, k.shape, v.shape)
        ctx.blocks = (q_block, k_block, scale)
        return out[..., : v.shape[-1]].reshape(B, Hkv, R, -1), lse.reshape(B, Hkv, R)

    @staticmethod
    def backward(ctx, dout, dlse):
        out, lse, *rest = ctx.saved_tensors
        q_block, k_block, scale = ctx.blocks
        dq, dk, dv = hyper_fused_backward(
            pad_head(_flat(dout)), _flat(dlse), out, lse, *rest, q_block=q_block,
            k_block=k_block, scale=scale)
        q_shape, k_shape, v_shape = ctx.shapes
        return (dq[..., : q_shape[-1]].reshape(q_shape), dk[..., : k_shape[-1]].reshape(k_shape),
                dv[..., : v_shape[-1]].reshape(v_shape), None, None, None, None, None, None,
                None, None)


def fused_sorted_attention(
    qf: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    perm_q: torch.Tensor,
    perm_k: torch.Tensor,
    sample_idx: torch.Tensor,
    log_weights: torch.Tensor,
    sample_blocks: torch.Tensor,
    *,
    q_block: int,
    k_block: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted block-diagonal + sampled attention, differentiable w.r.t. q, k and v.

    Parameters
    ----------
    qf : [B, H, R, D] queries (GQA groups folded into rows); k : [B, H, M, D];
        v : [B, H, M, Dv]; one dtype: float16 / bfloat16 (tensor-core products,
        float32 accumulation) or float32 (TF32 products); D, Dv <= 256 (float32: 128).
    perm_q : [B, H, R] int64, perm_k : [B, H, M] int64
        Original row / key of each LSH-sorted position; sorted query row r is
        in block ``r // q_block``, sorted key c in block ``c // k_block``.
    sample_idx : [B, H, S] int64 sampled keys (duplicates allowed);
        log_weights : [B, H, S] their log importance weights;
        sample_blocks : [B, H, S] the sorted block of each sampled key
        (samples in a row's own block are masked for that row).
    scale : softmax scale.

    Returns
    -------
    out : [B, H, R, Dv] in v's dtype and lse : [B, H, R] float32, original row
    order: the partial attention ``(out, lse)`` of
    :func:`kernelsketch.attn.hyper.naive.hyper_noncausal` with one hash round.
    The backward accumulates in float32; the log-weights are constants.
    Precision and the inputs the kernels take (wider heads: ValueError):
    :mod:`..triton_utils`, :func:`~kernelsketch.attn.common.sortlsh.fused_kernels_apply`.
    """
    check_head_dims("sortlsh", qf.dtype, D=qf.shape[-1], Dv=v.shape[-1])
    return _SortedSampledAttention.apply(qf, k, v, perm_q, perm_k, sample_idx, log_weights,
                                         sample_blocks, q_block, k_block, scale)

