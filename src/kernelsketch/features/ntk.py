"""Fully-connected ReLU NTK / NNGP: exact kernels and randomized feature maps.

Network convention (no biases, NTK parameterisation, ReLU scaled by sqrt(2)
so that a layer preserves the diagonal): ``depth`` = L hidden ReLU layers
followed by a linear output. With Sigma^(0) = <x, y> and cosines
c^(h) = Sigma^(h) / (|x| |y|), the recursion (Jacot et al. 2018; Arora et al.
2019, Eq. (3)-(5)) is

    Sigma^(h) = |x| |y| kappa1(c^(h-1)),      (NNGP of layer h)
    Theta^(h) = Theta^(h-1) kappa0(c^(h-1)) + Sigma^(h),   Theta^(0) = Sigma^(0),

and the NTK / NNGP of the network are Theta^(L) / Sigma^(L). Both are
homogeneous: K(x, y) = |x| |y| K(x/|x|, y/|y|), and Theta^(L)(x, x) = (L+1)|x|^2.
"""

from __future__ import annotations

import torch

from kernelsketch._checks import check_int
from kernelsketch.features._arccos import as_tensor_pair, cosines, kappa0, kappa1, return_like

__all__ = ["ntk_relu", "nngp_relu", "relu_ntk_of_cosine", "relu_nngp_of_cosine"]


def relu_ntk_of_cosine(t: torch.Tensor, depth: int) -> torch.Tensor:
    """NTK of unit-norm inputs as a function of their cosine ``t`` (any shape)."""
    theta, c = t, t
    for _ in range(depth):
        theta = theta * kappa0(c) + kappa1(c)
        c = kappa1(c)
    return theta


def relu_nngp_of_cosine(t: torch.Tensor, depth: int) -> torch.Tensor:
    """NNGP kernel of unit-norm inputs as a function of their cosine ``t`` (any shape)."""
    c = t
    for _ in range(depth):
        c = kappa1(c)
    return c


def _relu_kernel(X, Y, depth, of_cosine):
    check_int("depth", depth, min=1)
    X, Y, was_numpy = as_tensor_pair(X, Y)
    nx, ny = X.norm(dim=1), Y.norm(dim=1)
    t = cosines(X @ Y.T, nx, ny)
    return return_like(nx[:, None] * ny[None, :] * of_cosine(t, depth), was_numpy)


def ntk_relu(X, Y=None, *, depth: int = 1):
    """Exact neural tangent kernel of a fully-connected ReLU network.

    Parameters
    ----------
    X : torch.Tensor or ndarray of shape (n, d)
    Y : torch.Tensor or ndarray of shape (m, d), optional
        Defaults to ``X``.
    depth : int >= 1
        Number of hidden ReLU layers L.

    Returns
    -------
    K : same type as X, shape (n, m), X's dtype (numpy input: float64)
        ``Theta^(L)(x_i, y_j)`` (see module docstring); ``K(x, x) = (L+1)|x|^2``.

    References
    ----------
    Jacot, Gabriel, Hongler, "Neural Tangent Kernel", NeurIPS 2018.
    Arora et al., "On Exact Computation with an Infinitely Wide Neural Net", NeurIPS 2019.
    """
    return _relu_kernel(X, Y, depth, relu_ntk_of_cosine)


def nngp_relu(X, Y=None, *, depth: int = 1):
    """Exact NNGP (conjugate / arc-cosine) kernel of a fully-connected ReLU network.

    Parameters
    ----------
    X : torch.Tensor or ndarray of shape (n, d)
    Y : torch.Tensor or ndarray of shape (m, d), optional
        Defaults to ``X``.
    depth : int >= 1
        Number of hidden ReLU layers L (L compositions of the arc-cosine map).

    Returns
    -------
    K : same type as X, shape (n, m)
        ``Sigma^(L)(x_i, y_j) = |x_i| |y_j| kappa1^{(L)}(cos)``; ``K(x, x) = |x|^2``.

    References
    ----------
    Cho, Saul, "Kernel Methods for Deep Learning", NeurIPS 2009.
    """
    return _relu_kernel(X, Y, depth, relu_nngp_of_cosine)
