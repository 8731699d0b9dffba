"""Arc-cosine functions and shared input handling of the exact neural-kernel oracles.

``kappa0(t) = 1 - arccos(t) / pi`` and ``kappa1(t) = (sqrt(1 - t^2) + (pi - arccos(t)) t) / pi``
(Cho & Saul 2009, scaled so that ``kappa(1) = 1``): the dual activations of
``sqrt(2) * step`` and ``sqrt(2) * ReLU`` on unit-variance Gaussian pairs with
correlation ``t``. Theory: docs/neural_kernels.md.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kernelsketch._checks import check_same, check_tensor

__all__ = ["as_tensor_pair", "cosines", "kappa0", "kappa1", "return_like"]


def kappa0(t: torch.Tensor) -> torch.Tensor:
    """Order-0 arc-cosine function ``1 - arccos(t)/pi`` (input clamped to [-1, 1])."""
    return 1.0 - torch.arccos(t.clamp(-1.0, 1.0)) / math.pi


def kappa1(t: torch.Tensor) -> torch.Tensor:
    """Order-1 arc-cosine function ``(sqrt(1-t^2) + (pi - arccos t) t)/pi`` (clamped to [-1, 1])."""
    t = t.clamp(-1.0, 1.0)
    return (torch.sqrt(1.0 - t * t) + (math.pi - torch.arccos(t)) * t) / math.pi


def as_tensor_pair(X, Y, *, ndim: int = 2) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validate an oracle's inputs; return (X, Y, was_numpy) as torch tensors.

    ``X`` and ``Y`` are torch tensors or numpy arrays of rank ``ndim`` with the
    same trailing shape; ``Y=None`` means ``Y = X``.
    """
    was_numpy = isinstance(X, np.ndarray)
    if was_numpy:
        X = torch.from_numpy(np.asarray(X, dtype=np.float64))
    check_tensor("X", X, ndim=ndim)
    if Y is None:
        return X, X, was_numpy
    if isinstance(Y, np.ndarray):
        Y = torch.from_numpy(np.asarray(Y, dtype=np.float64)).to(X.dtype)
    check_tensor("Y", Y, ndim=ndim)
    check_same(("X", "Y"), (X, Y))
    if Y.shape[1:] != X.shape[1:]:
        raise ValueError(
            f"Y must have the trailing shape {list(X.shape[1:])} of X, got {list(Y.shape[1:])}"
        )
    return X, Y, was_numpy


def cosines(gram: torch.Tensor, nx: torch.Tensor, ny: torch.Tensor) -> torch.Tensor:
    """Cosines ``gram / (nx ny^T)`` clamped to [-1, 1]; 0 where a norm is 0."""
    scale = nx[:, None] * ny[None, :]
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, gram / safe, torch.zeros_like(gram)).clamp(-1.0, 1.0)


def return_like(K: torch.Tensor, was_numpy: bool):
    """Return ``K`` as a numpy array if the inputs were numpy arrays."""
    return K.numpy() if was_numpy else K
