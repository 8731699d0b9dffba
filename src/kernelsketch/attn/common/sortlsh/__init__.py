"""sortLSH (HyperAttention Alg. 1, KDEformer §4): shared by ``hyper`` and ``kde``.

- :mod:`.blocks`: torch path, the sorted block diagonal and the covered-pair test.
- :mod:`.fused`: the block diagonal plus masked, weighted key samples in one
  Triton kernel pair (:mod:`.kernels_fwd`, :mod:`.kernels_bwd`) behind one
  ``autograd.Function``; imported only where :func:`fused_kernels_apply` holds.
"""

from __future__ import annotations

import torch

from ..triton_utils import triton_available
from .blocks import block_diagonal_attention, covered_by_blocks, sorted_blocks

__all__ = ["block_diagonal_attention", "covered_by_blocks", "fused_kernels_apply", "sorted_blocks"]


def fused_kernels_apply(q: torch.Tensor) -> bool:
    """True when the fused Triton kernels (forward and backward) run: CUDA half-precision inputs."""
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and triton_available()
