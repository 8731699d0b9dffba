"""sortLSH (HyperAttention Alg. 1, KDEformer §4): shared by ``hyper`` and ``kde``.

- :mod:`.config`: the fields both methods share (:class:`.config.SortLSHConfig`) and the
  budget schedule.
- :mod:`.blocks`: torch path, the sorted block diagonal and the covered-pair test.
- :mod:`.estimate`: one estimate (hash, the method's sample, blocks + exact keys +
  samples) in one fused call: :mod:`.flash` (SDPA's CPU flash kernel) or :mod:`.fused`.
- :mod:`.fused`: the block diagonal plus masked, weighted key samples in one
  Triton kernel pair (:mod:`.kernels_fwd`, :mod:`.kernels_bwd`) behind one
  ``autograd.Function``; imported only where :func:`fused_kernels_apply` holds.
"""

from __future__ import annotations

import torch

from ..triton_utils import HALF, max_head_dim, tf32_allowed, triton_available
from .blocks import block_diagonal_attention, covered_by_blocks, sorted_blocks

__all__ = ["block_diagonal_attention", "covered_by_blocks", "fused_kernels_apply", "sorted_blocks"]


def fused_kernels_apply(q: torch.Tensor, v: torch.Tensor | None = None) -> bool:
    """True when the fused Triton kernels (forward and backward) run these inputs: CUDA,
    Triton imports, float16 / bfloat16, or float32 when torch computes float32 matmuls in
    TF32 (the kernels' float32 products are TF32: :mod:`..triton_utils`), and head
    dimensions D (and Dv of ``v``, when given) <= 256 (float32: 128). Everything else
    takes the torch path (:mod:`.blocks` and the method's ``naive.py``)."""
    dims = (q.shape[-1],) if v is None else (q.shape[-1], v.shape[-1])
    return (
        q.is_cuda
        and (q.dtype in HALF or (q.dtype == torch.float32 and tf32_allowed()))
        and max(dims) <= max_head_dim("sortlsh", q.dtype)
        and triton_available()
    )
