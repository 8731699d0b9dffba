"""Convolutional NTK (CNTK) of a ReLU conv net with global average pooling.

Network convention (no biases, NTK parameterisation, ReLU scaled by sqrt(2)):
``depth`` = L layers of (q x q convolution, stride 1, zero "same" padding,
ReLU), then global average pooling (GAP) and a linear output. For images x, y
with P = H W pixels, covariances are P x P matrices indexed by pixel pairs
(p, p'). Writing conv(M)_{p,p'} = q^-2 sum_{delta in q x q window} M_{p+delta, p'+delta}
(zero outside the image), the recursion (Arora et al. 2019, Sec. 4 and
App. E) is

    Sigma_g^(0) = <x_{:,p}, y_{:,p'}> (channel inner products),  Theta_g^(0) = 0,
    Sigma_f^(h) = conv(Sigma_g^(h-1)),   Theta_f^(h) = Sigma_f^(h) + conv(Theta_g^(h-1)),
    Sigma_g^(h) = n_p n'_p' kappa1(c),   Theta_g^(h) = Theta_f^(h) kappa0(c),

with c = Sigma_f^(h)_{p,p'} / (n_p n'_p'), n_p^2 = Sigma_f^(h)(x, x)_{p,p} the
pre-activation variance at pixel p (computable per image: the diagonal
obeys n^(h) = conv(n^(h-1)) since kappa1(1) = 1). Finally

    CNNGP(x, y) = mean_{p,p'} Sigma_g^(L),   CNTK(x, y) = mean_{p,p'} (Sigma_g^(L) + Theta_g^(L)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernelsketch._checks import check_int
from kernelsketch.features._arccos import as_tensor_pair, kappa0, kappa1, return_like

__all__ = ["cntk_relu", "cnngp_relu", "pixel_variances"]


def _check_filter_size(filter_size: int) -> int:
    check_int("filter_size", filter_size, min=1)
    if filter_size % 2 == 0:
        raise ValueError(f"filter_size must be odd (same padding), got {filter_size}")
    return filter_size


def pixel_variances(X: torch.Tensor, depth: int, filter_size: int) -> list[torch.Tensor]:
    """Pre-activation variances ``n^(h)`` [n, H, W] of layers h = 0..depth for images X [n, C, H, W].

    ``n^(0)`` is the squared pixel norm over channels; ``n^(h) = conv(n^(h-1))``
    (a q x q box filter / q^2 with zero padding).
    """
    q = filter_size
    v = (X * X).sum(1, keepdim=True)
    box = torch.full((1, 1, q, q), 1.0 / q**2, dtype=X.dtype, device=X.device)
    out = [v[:, 0]]
    for _ in range(depth):
        v = F.conv2d(v, box, padding=q // 2)
        out.append(v[:, 0])
    return out


def _conv_pairs(M: torch.Tensor, q: int) -> torch.Tensor:
    """conv(M) for M [a, b, H, W, H, W]: mean of M over joint shifts of both pixels."""
    H, W = M.shape[2], M.shape[3]
    r = q // 2
    Mp = F.pad(M, (r,) * 8)  # zero-pad the four pixel dims
    out = torch.zeros_like(M)
    for di in range(q):
        for dj in range(q):
            out += Mp[:, :, di : di + H, dj : dj + W, di : di + H, dj : dj + W]
    return out / q**2


def _cntk_block(Xb, Yb, vx, vy, depth, q):
    """(CNNGP, CNTK) of image blocks Xb [a, C, H, W], Yb [b, C, H, W]."""
    sigma = torch.einsum("achw,bcij->abhwij", Xb, Yb)
    theta = torch.zeros_like(sigma)
    for h in range(1, depth + 1):
        sigma_f = _conv_pairs(sigma, q)
        theta_f = sigma_f + _conv_pairs(theta, q)
        nx = vx[h].sqrt()[:, None, :, :, None, None]
        ny = vy[h].sqrt()[None, :, None, None, :, :]
        scale = nx * ny
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        c = torch.where(scale > 0, sigma_f / safe, torch.zeros_like(sigma_f))
        sigma = scale * kappa1(c)
        theta = theta_f * kappa0(c)
    return sigma.mean((2, 3, 4, 5)), (sigma + theta).mean((2, 3, 4, 5))


def _cntk_both(X, Y, depth, filter_size, block_elems=2**22):
    check_int("depth", depth, min=1)
    q = _check_filter_size(filter_size)
    X, Y, was_numpy = as_tensor_pair(X, Y, ndim=4)
    vx = pixel_variances(X, depth, q)
    vy = vx if Y is X else pixel_variances(Y, depth, q)
    P = X.shape[2] * X.shape[3]
    rows = max(1, block_elems // max(1, Y.shape[0] * P * P))
    nngp, ntk = [], []
    for i in range(0, X.shape[0], rows):
        s = slice(i, i + rows)
        a, b = _cntk_block(X[s], Y, [v[s] for v in vx], vy, depth, q)
        nngp.append(a)
        ntk.append(b)
    return return_like(torch.cat(nngp), was_numpy), return_like(torch.cat(ntk), was_numpy)


def cntk_relu(X, Y=None, *, depth: int = 1, filter_size: int = 3):
    """Exact CNTK of a ReLU conv net with global average pooling.

    Cost O(n m (H W)^2 q^2 depth) time: meant for small images (e.g. 8 x 8) and
    as the test oracle of :class:`CNTKSketch`.

    Parameters
    ----------
    X : torch.Tensor or ndarray of shape (n, C, H, W)
    Y : torch.Tensor or ndarray of shape (m, C, H, W), optional
        Defaults to ``X``.
    depth : int >= 1
        Number of convolution + ReLU layers L.
    filter_size : odd int >= 1
        Convolution window q (q x q, zero "same" padding).

    Returns
    -------
    K : same type as X, shape (n, m)
        CNTK(x_i, y_j) as defined in the module docstring; homogeneous of
        degree 2 in the pixel values (K(s x, s x) = s^2 K(x, x)).

    References
    ----------
    Arora, Du, Hu, Li, Salakhutdinov, Wang, "On Exact Computation with an
    Infinitely Wide Neural Net", NeurIPS 2019.
    """
    return _cntk_both(X, Y, depth, filter_size)[1]


def cnngp_relu(X, Y=None, *, depth: int = 1, filter_size: int = 3):
    """Exact NNGP kernel of the same conv net as :func:`cntk_relu` (same parameters)."""
    return _cntk_both(X, Y, depth, filter_size)[0]
