"""Settings shared by the Triton kernels (common/sortlsh, polysketch).

Every kernel has a pure-PyTorch twin used on CPU and in tests. Kernels run
only for CUDA tensors when Triton imports; on CPU the tests run them under
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def triton_available() -> bool:
    """True when the ``triton`` package imports."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: exact fp32 products for fp32 inputs (no TF32), so kernels
    match their torch twins; TF32 otherwise (ignored for half-precision operands)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def num_warps(d: int, dv: int) -> int:
    """Warps per program: wide heads keep [64, 128] fp32 accumulators per tile, spread them."""
    return 8 if max(d, dv) >= 128 else 4
