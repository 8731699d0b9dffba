"""Triton GPU kernels. Each has a pure-PyTorch twin used on CPU and in tests.

Kernels are used only for CUDA tensors when Triton imports; on CPU they run
under ``TRITON_INTERPRET=1`` in the tests.
"""

from __future__ import annotations

import functools


@functools.cache
def triton_available() -> bool:
    """True when the ``triton`` package imports."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
