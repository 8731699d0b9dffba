"""Convolutional NTK (CNTK) of a ReLU conv net with global average pooling.

``depth`` = L layers of (q x q convolution, stride 1, zero "same" padding, ReLU),
then global average pooling and a linear output; no biases, NTK
parameterisation, ReLU scaled by sqrt(2). :func:`cntk_relu` and
:func:`cnngp_relu` evaluate the pixel-pair recursion of Arora et al. 2019 (Sec. 4
and App. E) exactly for images [n, C, H, W] (``O(n m (H W)^2 q^2 depth)``);
:class:`CNTKSketch` sketches it per pixel in time linear in the number of pixels
(arXiv 2106.07880, Sec. 5).

Theory (the recursion, the per-pixel sketch): docs/neural_kernels.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kernelsketch._checks import check_choice, check_int
from kernelsketch.features._arccos import as_tensor_pair, kappa0, kappa1, return_like
from kernelsketch.features._base import RandomFeaturesTransformer
from kernelsketch.features._powerseries import (
    PowerSeriesSketch,
    fit_nonnegative_polynomial,
    unit_rows,
)
from kernelsketch.sketch.projections import SRHT
from kernelsketch.sketch.sampling import resolve_generator
from kernelsketch.sketch.tensor import Degree2Sketch

__all__ = ["CNTKSketch", "CNTKSketchMap", "cnngp_relu", "cntk_relu", "pixel_variances"]


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
    H, W = Xb.shape[2:]
    # Layer 1: conv of the pixel inner products = inner products of q x q patches / q^2.
    px = F.unfold(Xb, q, padding=q // 2)  # [a, C q q, P]
    py = F.unfold(Yb, q, padding=q // 2)
    sigma_f = torch.einsum("akp,bkr->abpr", px, py).reshape(len(Xb), len(Yb), H, W, H, W) / q**2
    theta_f = sigma_f  # Theta_g^(0) = 0
    for h in range(1, depth + 1):
        nx = vx[h].sqrt()[:, None, :, :, None, None]
        ny = vy[h].sqrt()[None, :, None, None, :, :]
        scale = nx * ny
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        c = torch.where(scale > 0, sigma_f / safe, torch.zeros_like(sigma_f))
        sigma = scale * kappa1(c)
        theta = theta_f * kappa0(c)
        if h < depth:
            sigma_f = _conv_pairs(sigma, q)
            theta_f = sigma_f + _conv_pairs(theta, q)
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
        CNTK(x_i, y_j) (the recursion of docs/neural_kernels.md); homogeneous
        of degree 2 in the pixel values (K(s x, s x) = s^2 K(x, x)).

    References
    ----------
    Arora, Du, Hu, Li, Salakhutdinov, Wang, "On Exact Computation with an
    Infinitely Wide Neural Net", NeurIPS 2019.
    """
    return _cntk_both(X, Y, depth, filter_size)[1]


def cnngp_relu(X, Y=None, *, depth: int = 1, filter_size: int = 3):
    """Exact NNGP kernel of the same conv net as :func:`cntk_relu` (same parameters)."""
    return _cntk_both(X, Y, depth, filter_size)[0]


# ----------------------------------------------------------------------------- CNTK Sketch


class CNTKSketchMap(nn.Module):
    """Torch feature map of CNTK Sketch for images [n, C, H, W] (time linear in pixels).

    Per-pixel features of dimension ``pixel_dim`` follow the recursion of
    :func:`cntk_relu` (arXiv 2106.07880, Sec. 5): convolution = concatenated q x q
    neighbourhoods compressed by an SRHT; ReLU = power-series sketches of
    non-negative polynomial fits of kappa1 / kappa0 with the exact pre-activation
    std (:func:`pixel_variances`) and a degree-2 TensorSRHT for the NTK product;
    global average pooling, then an SRHT to ``n_components``. Output
    [n, n_components] in the input dtype. Theory: docs/neural_kernels.md.

    Parameters
    ----------
    image_shape : (C, H, W)
    depth, filter_size : as :func:`cntk_relu`
    n_components : int
    pixel_dim : int
        Per-pixel feature dimension.
    degree : int
        Degree of the kappa fits.
    kernel : {"ntk", "nngp"}
    seed : int, optional
    generator : torch.Generator, optional
        Source of the sketches (one of the two; neither: torch's global generator).
    """

    def __init__(
        self,
        image_shape,
        *,
        depth,
        filter_size,
        n_components,
        pixel_dim,
        degree,
        kernel="ntk",
        seed=None,
        generator=None,
    ):
        super().__init__()
        C, _H, _W = image_shape
        self.image_shape, self.depth, self.q, self.kernel = (
            tuple(image_shape),
            depth,
            filter_size,
            kernel,
        )
        m, q2 = pixel_dim, filter_size**2
        self.register_buffer("c1", fit_nonnegative_polynomial("kappa1", kappa1, degree).sqrt())
        self.register_buffer("c0", fit_nonnegative_polynomial("kappa0", kappa0, degree).sqrt())
        g = resolve_generator(seed, generator)
        self.conv_psi = nn.ModuleList(
            SRHT((C if h == 0 else m) * q2, m, generator=g) for h in range(depth)
        )
        self.relu = nn.ModuleList(
            PowerSeriesSketch(m, degree, m, poly_dim=m, generator=g) for _ in range(depth)
        )
        if kernel == "ntk":
            self.conv_phi = nn.ModuleList(SRHT(2 * m * q2, m, generator=g) for h in range(1, depth))
            self.step = nn.ModuleList(SRHT((degree + 1) * m, m, generator=g) for _ in range(depth))
            self.product = nn.ModuleList(
                Degree2Sketch(m, m, kind="srht", generator=g) for _ in range(depth)
            )
        self.pool = SRHT((2 if kernel == "ntk" else 1) * m, n_components, generator=g)
        self.d_out = n_components

    def _neighbourhoods(self, z: torch.Tensor) -> torch.Tensor:
        """[n, P, k] per-pixel features -> [n, P, k q^2] / q (zero padding outside the image)."""
        n, _, k = z.shape
        H, W = self.image_shape[1:]
        img = z.transpose(1, 2).reshape(n, k, H, W)
        return F.unfold(img, self.q, padding=self.q // 2).transpose(1, 2) / self.q

    def forward(self, x: torch.Tensor, *, batch_size: int = 128) -> torch.Tensor:
        """Features [n, n_components] of images x [n, C, H, W] or [n, C*H*W] (dtype of x).

        Images are processed ``batch_size`` at a time (memory O(batch_size H W
        pixel_dim q^2)).
        """
        x = x.reshape(x.shape[0], *self.image_shape)
        return torch.cat(
            [self._features(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        )

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        variances = pixel_variances(x, self.depth, self.q)
        psi = x.flatten(2).transpose(1, 2)  # [n, P, C]
        phi = None
        for h in range(self.depth):
            nb_psi = self._neighbourhoods(psi)
            psi_f = self.conv_psi[h](nb_psi)
            if self.kernel == "ntk":
                # Theta_f = conv(Theta_g) + Sigma_f; at h = 0, Theta_g = 0 so Theta_f = Sigma_f.
                phi_f = (
                    psi_f
                    if phi is None
                    else self.conv_phi[h - 1](
                        torch.cat([self._neighbourhoods(phi), nb_psi], dim=-1)
                    )
                )
            u, _ = unit_rows(psi_f)
            std = variances[h + 1].flatten(1).sqrt()[..., None].to(x.dtype)  # [n, P, 1]
            relu = self.relu[h]
            powers = relu.poly.all_powers(u)
            psi = std * relu.combine(powers, self.c1.to(x.dtype))
            if self.kernel == "ntk":
                step = relu.combine(powers, self.c0.to(x.dtype), compress=self.step[h])
                phi = self.product[h](phi_f, step)
        pooled = psi.mean(1) if self.kernel == "nngp" else torch.cat([psi.mean(1), phi.mean(1)], -1)
        return self.pool(pooled)


class CNTKSketch(RandomFeaturesTransformer):
    """CNTK Sketch features of a ReLU conv net with global average pooling (scikit-learn transformer).

    ``Z @ Z.T`` approximates :func:`cntk_relu` (or :func:`cnngp_relu`) in time
    linear in the number of pixels: per-pixel sketches of the CNTK recursion
    (:class:`CNTKSketchMap`). Error: the polynomial fits of the arc-cosine
    functions (degree ``degree``) plus sketching error falling with
    ``pixel_dim`` and ``n_components``.

    Parameters
    ----------
    depth : int >= 1, default 1
        Convolution + ReLU layers.
    n_components : int >= 1, default 256
    filter_size : odd int, default 3
    image_shape : (C, H, W) or None, default None
        Layout of each row of X (C-major, like ``images.reshape(n, -1)``).
        None: one channel, square if n_features is a square, else 1 x n_features.
    pixel_dim : int or None, default None
        Per-pixel feature dimension (``min(n_components, 64)`` if None).
    degree : int >= 1, default 6
        Degree of the non-negative polynomial fits of kappa0, kappa1.
    kernel : {"ntk", "nngp"}, default "ntk"
    random_state : int, RandomState or None

    Attributes
    ----------
    feature_map_ : CNTKSketchMap
        Fitted torch map; call it on [n, C, H, W] GPU batches after ``.to("cuda")``.
    image_shape_ : tuple (C, H, W)
    n_features_in_ : int

    References
    ----------
    Zandieh, Han, Avron, Shoham, Kim, Shin, "Scaling Neural Tangent Kernels via
    Sketching and Random Features", NeurIPS 2021 (arXiv 2106.07880).
    """

    _fit_reads_data = False  # the map depends on n_features only: fit takes Dask arrays

    def __init__(
        self,
        *,
        depth=1,
        n_components=256,
        filter_size=3,
        image_shape=None,
        pixel_dim=None,
        degree=6,
        kernel="ntk",
        random_state=None,
    ):
        self.depth = depth
        self.n_components = n_components
        self.filter_size = filter_size
        self.image_shape = image_shape
        self.pixel_dim = pixel_dim
        self.degree = degree
        self.kernel = kernel
        self.random_state = random_state

    def _resolved_image_shape(self, n_features: int) -> tuple[int, int, int]:
        if self.image_shape is None:
            side = math.isqrt(n_features)
            return (1, side, side) if side * side == n_features else (1, 1, n_features)
        shape = tuple(self.image_shape)
        if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
            raise ValueError(
                f"image_shape must be (C, H, W) of positive ints, got {self.image_shape!r}"
            )
        if math.prod(shape) != n_features:
            raise ValueError(
                f"image_shape {shape} must have C*H*W = n_features = {n_features}, got {math.prod(shape)}"
            )
        return shape

    def _check_params(self, n_features):
        check_int("depth", self.depth, min=1)
        check_int("n_components", self.n_components, min=1)
        _check_filter_size(self.filter_size)
        check_int("degree", self.degree, min=1, max=64)
        check_choice("kernel", self.kernel, ("ntk", "nngp"))
        if self.pixel_dim is not None:
            check_int("pixel_dim", self.pixel_dim, min=1)
        self._resolved_image_shape(n_features)

    def _make_feature_map(self, n_features, generator, X):
        self.image_shape_ = self._resolved_image_shape(n_features)
        return CNTKSketchMap(
            self.image_shape_,
            depth=self.depth,
            filter_size=self.filter_size,
            n_components=self.n_components,
            pixel_dim=self.pixel_dim or min(self.n_components, 64),
            degree=self.degree,
            kernel=self.kernel,
            generator=generator,
        )
