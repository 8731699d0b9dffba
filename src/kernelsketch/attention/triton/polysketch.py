"""Triton kernels of causal PolySketch attention (placeholder: torch path only)."""

from __future__ import annotations


def supported(q, k, v, fq, *, block_size, exact_local) -> bool:
    """Whether the Triton kernels handle these inputs."""
    return False
