"""Convolutional NTK / NNGP of any activation: the exact recursion and CNTK Sketch.

``depth`` = L layers of (q x q convolution, stride 1, "same" zero or circular
padding, activation), then a linear readout after global average pooling
("gap") or flattening ("flatten"); every layer computes
``weight_std / sqrt(fan_in) W * h + bias_std b`` (NTK parameterisation, fan-in
``C q^2`` for a convolution). :func:`conv_neural_kernel` evaluates the
pixel-pair recursion of Arora et al. 2019 (Sec. 4 and App. E), generalised to
any activation and bias, exactly for images [n, C, H, W]
(``O(n m (H W)^2 q^2 depth)``); :func:`cntk_relu` / :func:`cnngp_relu` are the
bias-free ReLU kernels of Arora et al.'s convention
(``cntk_relu(X) = C/2 * conv_neural_kernel(X, weight_std=sqrt(2))``).
:class:`CNTKSketch` sketches the recursion per pixel in time linear in the
number of pixels (arXiv 2106.07880, Sec. 5; the activations by Hermite series
with exact per-pixel radial factors, arXiv 2209.04121).

Theory (the recursion, the per-pixel sketch, the measured headline):
docs/neural_kernels.md.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kernelsketch._checks import check_allocation, check_choice, check_float, check_int
from kernelsketch.features._base import RandomFeaturesTransformer
from kernelsketch.features._horner import HornerSketch, TensorPairSketch
from kernelsketch.features._powerseries import unit_rows
from kernelsketch.features.activations import (
    ACTIVATIONS,
    DEFAULT_TOL,
    METHODS,
    Activation,
    check_network_params,
    dual_pair,
    radial_coefficients,
    variance_map,
)
from kernelsketch.features.neural import check_first_layer, rescaled_kernel
from kernelsketch.sketch.projections import SRHT, compute_dtype, random_signs
from kernelsketch.sketch.sampling import resolve_generator

__all__ = [
    "CNTKSketch",
    "CNTKSketchMap",
    "cnngp_relu",
    "cntk_relu",
    "conv_neural_kernel",
    "pixel_variances",
]

PADDINGS = ("zeros", "circular")
READOUTS = ("gap", "flatten")


def _check_filter_size(filter_size: int) -> int:
    check_int("filter_size", filter_size, min=1)
    if filter_size % 2 == 0:
        raise ValueError(f"filter_size must be odd (same padding), got {filter_size}")
    return filter_size


def _check_conv(filter_size, padding, readout):
    _check_filter_size(filter_size)
    check_choice("padding", padding, PADDINGS)
    check_choice("readout", readout, READOUTS)


def _box(v: torch.Tensor, q: int, padding: str) -> torch.Tensor:
    """Mean over the q x q window of each pixel of v [n, H, W] (zero or circular padding)."""
    r = q // 2
    v = v[:, None]
    box = torch.full((1, 1, q, q), 1.0 / q**2, dtype=v.dtype, device=v.device)
    if padding == "circular":
        return F.conv2d(F.pad(v, (r, r, r, r), mode="circular"), box)[:, 0]
    return F.conv2d(v, box, padding=r)[:, 0]


def pixel_variances(X, depth, filter_size, *, activation=None, weight_var=2.0, bias_var=0.0,
                    input_var=0.5, padding="zeros"):
    """Pre-activation variances ``n^(h)`` [n, H, W] of the conv layers h = 1..depth.

    ``n^(1) = weight_var box(input_var |x_p|^2) + bias_var``,
    ``n^(h) = weight_var box(E[sigma(sqrt(n^(h-1)) g)^2]) + bias_var`` (box: the q x q
    window mean, zero or circular padding) for images X [n, C, H, W] (float64).
    The defaults are the bias-free ReLU network of :func:`cntk_relu`, where
    ``n^(h)`` is the box filter applied h times to the squared pixel norms.
    """
    act = ACTIVATIONS["relu"] if activation is None else activation
    v = input_var * (X * X).sum(1)
    out = []
    for _ in range(depth):
        n = weight_var * _box(v, filter_size, padding) + bias_var
        out.append(n)
        v = variance_map(act, n)
    return out


def _conv_pairs(M: torch.Tensor, q: int, padding: str) -> torch.Tensor:
    """Mean over joint q x q shifts of both pixels of M [a, b, H, W, H, W]."""
    H, W = M.shape[2], M.shape[3]
    r = q // 2
    out = torch.zeros_like(M)
    if padding == "circular":
        for di in range(-r, r + 1):
            for dj in range(-r, r + 1):
                out += M.roll((di, dj, di, dj), dims=(2, 3, 4, 5))
        return out / q**2
    Mp = F.pad(M, (r,) * 8)  # zero-pad the four pixel dims
    for di in range(q):
        for dj in range(q):
            out += Mp[:, :, di : di + H, dj : dj + W, di : di + H, dj : dj + W]
    return out / q**2


def _patches(X: torch.Tensor, q: int, padding: str) -> torch.Tensor:
    """q x q patches [n, C q q, H W] of images X [n, C, H, W] (zero or circular padding)."""
    r = q // 2
    if padding == "circular":
        return F.unfold(F.pad(X, (r, r, r, r), mode="circular"), q)
    return F.unfold(X, q, padding=r)


def _readout(M: torch.Tensor, readout: str) -> torch.Tensor:
    """Pixel-pair matrices [a, b, H, W, H, W] -> [a, b]: all pairs (gap) or p = p' (flatten)."""
    if readout == "gap":
        return M.mean((2, 3, 4, 5))
    a, b, H, W = M.shape[:4]
    return M.reshape(a, b, H * W, H * W).diagonal(dim1=2, dim2=3).mean(-1)


class _ConvNet(NamedTuple):
    """The network of :func:`conv_neural_kernel` (variances, not standard deviations)."""

    act: Activation
    depth: int
    kernel: str
    q: int
    input_var: float
    weight_var: float
    bias_var: float
    padding: str
    readout: str
    method: str
    tol: float


#: Tile of the exact kernel: image pairs per tile x (H W)^2 entries, at least one pair (2^16
#: float64 = 512 KiB per temporary: the ~50 elementwise passes of a tile stay in a 2 MiB L2;
#: measured on digits 8x8, 1 thread: 2-3x less time per pair than 2^22).
BLOCK_ELEMS = 2**16
#: Peak live float64 temporaries of one tile, in tile sizes: closed-form duals / Hermite series
#: (measured at depth 1-3 on 24 x 24 images: 14-38 / 107-180; 2-D quadrature entries add their
#: nodes).
TILE_TEMPS = (48, 256)


def _conv_block(px, py, vx, vy, shape, net: _ConvNet):
    """Kernel [a, b] of a tile of images from their patches px [a, C q q, P], py [b, C q q, P]
    (pre-activation variances vx, vy; shape = (H, W))."""
    q, wv, bv, pad = net.q, net.weight_var, net.bias_var, net.padding
    ntk = net.kernel == "ntk"
    H, W = shape
    gram = torch.einsum("akp,bkr->abpr", px, py).reshape(len(px), len(py), H, W, H, W)
    sigma = gram.mul_(wv * net.input_var / q**2)  # Sigma_f^(1)
    if bv:
        sigma = sigma.add_(bv)
    theta = sigma  # Theta_f^(1)
    for h in range(net.depth):
        ax = vx[h][:, None, :, :, None, None]
        ay = vy[h][None, :, None, None, :, :]
        T, Td = dual_pair(net.act, ax, ay, sigma, derivative=ntk, method=net.method, tol=net.tol)
        if h + 1 < net.depth:
            sigma = wv * _conv_pairs(T, q, pad) + bv
            if ntk:
                theta = sigma + wv * _conv_pairs(Td * theta, q, pad)
    out = torch.addcmul(T, Td, theta) if ntk else T  # NTK: T + T' Theta, NNGP: T
    return wv * _readout(out, net.readout) + bv


def _conv_kernel(X, Y, net: _ConvNet, block_elems=BLOCK_ELEMS):
    """The kernel of ``net`` for images X, Y (any magnitude when homogeneous), X's type and dtype.

    ``net.input_var=None`` means ``1 / C``. The [n, m] Gram matrix is computed
    in tiles of ``a x a`` image pairs, ``a = max(1, isqrt(block_elems / (H W)^2))``
    (``Y is X``: the tiles on and above the diagonal, mirrored), so the peak memory is
    ``8 TILE_TEMPS max(block_elems, (H W)^2)`` bytes of temporaries plus the n x m
    output; ``ValueError`` before computing when that exceeds the available memory.
    """

    def compute(X64, Y64):
        iv = 1.0 / X64.shape[1] if net.input_var is None else net.input_var
        full = net._replace(input_var=iv)
        kw = {"activation": net.act, "weight_var": net.weight_var, "bias_var": net.bias_var,
              "input_var": iv, "padding": net.padding}
        vx = pixel_variances(X64, net.depth, net.q, **kw)
        symmetric = Y64 is X64
        vy = vx if symmetric else pixel_variances(Y64, net.depth, net.q, **kw)
        check_first_layer(torch.cat([vx[0].flatten(), vy[0].flatten()]), net.act)
        n, m, (H, W) = len(X64), len(Y64), X64.shape[2:]
        pairs = (H * W) ** 2
        side = max(1, math.isqrt(block_elems // pairs))
        a, b = min(side, n), min(side, m)
        temps = TILE_TEMPS[net.act.dual is None or net.method in ("hermite", "quadrature")]
        check_allocation(
            8.0 * (3 * n * m + temps * a * b * pairs),
            f"the exact kernel of {n} x {m} images of {H} x {W} pixels (the output, its "
            f"rescaled copies and {temps} temporaries of {a} x {b} image pairs x "
            f"(H W)^2 = {pairs} pixel pairs)",
            "pass fewer images per call, or use CNTKSketch",
        )
        px = _patches(X64, net.q, net.padding)
        py = px if symmetric else _patches(Y64, net.q, net.padding)
        K = X64.new_empty(n, m)
        for i in range(0, n, side):
            rows, vrows = px[i : i + side], [v[i : i + side] for v in vx]
            for j in range(i if symmetric else 0, m, side):
                tile = _conv_block(rows, py[j : j + side], vrows, [v[j : j + side] for v in vy],
                                   (H, W), full)
                K[i : i + side, j : j + side] = tile
                if symmetric and j > i:
                    K[j : j + side, i : i + side] = tile.T
        return K

    return rescaled_kernel(X, Y, net.act, net.bias_var, compute, ndim=4)


def conv_neural_kernel(X, Y=None, *, activation="relu", depth: int = 1, kernel: str = "ntk",
                       filter_size: int = 3, weight_std: float = 1.0, bias_std: float = 0.0,
                       padding: str = "zeros", readout: str = "gap", method: str = "auto",
                       tol: float = DEFAULT_TOL):
    """Exact CNTK / CNNGP of a conv net of any activation (the recursion of docs/neural_kernels.md).

    Cost ``O(n m (H W)^2 q^2 depth)`` time (half the pairs when ``Y`` is None):
    meant for small images (e.g. 8 x 8) and as the test oracle of
    :class:`CNTKSketch`. Memory: the n x m output plus ``O(max(2^16, (H W)^2))``
    per temporary (tiles of image pairs, :data:`BLOCK_ELEMS`); ``ValueError``
    before computing when that cannot fit (digits 8x8: the 1257-image Gram and
    the 540 x 1257 test kernel in 245 CPU seconds on one thread, BENCHMARKS.md).

    Parameters
    ----------
    X : torch.Tensor or ndarray of shape (n, C, H, W)
    Y : torch.Tensor or ndarray of shape (m, C, H, W), optional
        Defaults to ``X``.
    activation : name in ACTIVATIONS, Activation or callable, default "relu"
    depth : int >= 1
        Convolution + activation layers L.
    kernel : {"ntk", "nngp"}
    filter_size : odd int >= 1
        Convolution window q (q x q, stride 1, "same" size).
    weight_std, bias_std : float >= 0
        Every layer computes ``weight_std / sqrt(fan_in) W * h + bias_std b``
        (fan-in C q^2 for the first convolution; the readout included).
    padding : {"zeros", "circular"}
    readout : {"gap", "flatten"}
        Global average pooling, or flatten, before the linear readout.
    method, tol
        As :func:`~kernelsketch.features.neural_kernel`.

    Returns
    -------
    K : ndarray (float64) for numpy input, else a tensor of X's dtype; shape (n, m)

    References
    ----------
    Arora, Du, Hu, Li, Salakhutdinov, Wang, "On Exact Computation with an
    Infinitely Wide Neural Net", NeurIPS 2019.
    """
    act = check_network_params(activation, depth, kernel, weight_std, bias_std, "ntk")
    _check_conv(filter_size, padding, readout)
    check_choice("method", method, METHODS)
    check_float("tol", tol, min=0.0, max=1e-2, min_exclusive=True)
    net = _ConvNet(act, depth, kernel, filter_size, None, float(weight_std) ** 2,
                   float(bias_std) ** 2, padding, readout, method, tol)
    return _conv_kernel(X, Y, net)


def cntk_relu(X, Y=None, *, depth: int = 1, filter_size: int = 3):
    """Exact CNTK of a bias-free ReLU conv net with global average pooling (Arora et al. 2019).

    ReLU scaled by sqrt(2) and the first layer on ``<x_p, y_p'>`` (no 1/C):
    ``cntk_relu(X) = C/2 * conv_neural_kernel(X, weight_std=sqrt(2))``; homogeneous
    of degree 2 in the pixel values, for inputs of any magnitude.

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
    """
    check_network_params("relu", depth, "ntk", 1.0, 0.0, "ntk")
    _check_filter_size(filter_size)
    net = _ConvNet(ACTIVATIONS["relu"], depth, "ntk", filter_size, 0.5, 2.0, 0.0, "zeros", "gap",
                   "auto", DEFAULT_TOL)
    return _conv_kernel(X, Y, net)


def cnngp_relu(X, Y=None, *, depth: int = 1, filter_size: int = 3):
    """Exact NNGP kernel of the same conv net as :func:`cntk_relu` (same parameters).

    ``cnngp_relu(X) = C/2 * conv_neural_kernel(X, kernel="nngp", weight_std=sqrt(2))``.
    """
    check_network_params("relu", depth, "ntk", 1.0, 0.0, "ntk")
    _check_filter_size(filter_size)
    net = _ConvNet(ACTIVATIONS["relu"], depth, "nngp", filter_size, 0.5, 2.0, 0.0, "zeros", "gap",
                   "auto", DEFAULT_TOL)
    return _conv_kernel(X, Y, net)


# ----------------------------------------------------------------------------- CNTK Sketch


class CNTKSketchMap(nn.Module):
    """Torch feature map of CNTK Sketch for images [n, C, H, W] (time linear in pixels).

    Per-pixel features of dimension ``pixel_dim`` follow the recursion of
    :func:`conv_neural_kernel` (arXiv 2106.07880, Sec. 5): convolution =
    concatenated q x q neighbourhoods compressed by an SRHT (plus random signs
    for the bias); activation = :class:`HornerSketch` of the Hermite series of
    sigma and sigma' with the exact per-pixel pre-activation std
    (:func:`pixel_variances`; arXiv 2209.04121) and a TensorSketch for the NTK
    product ``T'(Sigma_f) Theta_f``; readout = the pixel mean (gap) or the
    concatenation (flatten), compressed by an SRHT to ``n_components``. Output
    [n, n_components] in the input dtype. Theory: docs/neural_kernels.md.

    Parameters
    ----------
    image_shape : (C, H, W)
    depth, filter_size, padding, readout : as :func:`conv_neural_kernel`
    n_components : int
    pixel_dim : int
        Per-pixel feature dimension.
    degree : int
        Hermite truncation degree (tail folded into the top coefficient).
    kernel : {"ntk", "nngp"}
    activation : Activation, default ReLU
    weight_var, bias_var : float
    input_var : float or None
        First-layer scale; None: ``1 / C``.
    seed : int, optional
    generator : torch.Generator, optional
        Source of the sketches (one of the two; neither: torch's global generator).
    """

    def __init__(self, image_shape, *, depth, filter_size, n_components, pixel_dim, degree,
                 kernel="ntk", activation=None, weight_var=1.0, bias_var=0.0, input_var=None,
                 padding="zeros", readout="gap", seed=None, generator=None):
        super().__init__()
        C, H, W = image_shape
        self.image_shape, self.depth, self.q = tuple(image_shape), depth, filter_size
        self.kernel, self.padding, self.readout = kernel, padding, readout
        self.activation = ACTIVATIONS["relu"] if activation is None else activation
        self.weight_var, self.bias_var = float(weight_var), float(bias_var)
        self.input_var = float(1.0 / C if input_var is None else input_var)
        self.degree = degree
        m, q2 = pixel_dim, filter_size**2
        g = resolve_generator(seed, generator)
        ntk = kernel == "ntk"
        self.conv_psi = nn.ModuleList(
            SRHT((C if h == 0 else m) * q2, m, generator=g) for h in range(depth)
        )
        self.register_buffer("bias_signs", random_signs((depth + 1, max(m, n_components)), g)
                             .double())
        self.series = nn.ModuleList(HornerSketch(m, degree, m, generator=g) for _ in range(depth))
        if ntk:
            self.conv_phi = nn.ModuleList(SRHT(m * q2, m, generator=g) for _ in range(1, depth))
            self.derivative_series = nn.ModuleList(
                HornerSketch(m, degree, m, generator=g) for _ in range(depth)
            )
            self.products = nn.ModuleList(TensorPairSketch(m, m, m, generator=g)
                                          for _ in range(depth))
        pooled = m if readout == "gap" else m * H * W
        self.pool = nn.ModuleList(SRHT(pooled, n_components, generator=g)
                                  for _ in range(2 if ntk else 1))
        self.d_out = n_components

    def _neighbourhoods(self, z: torch.Tensor) -> torch.Tensor:
        """[n, P, k] per-pixel features -> [n, P, k q^2] / q (the padding outside the image)."""
        n, _, k = z.shape
        H, W = self.image_shape[1:]
        img = z.transpose(1, 2).reshape(n, k, H, W)
        return _patches(img, self.q, self.padding).transpose(1, 2) / self.q

    def _bias(self, h: int, dim: int, dtype) -> torch.Tensor:
        return math.sqrt(self.bias_var) * self.bias_signs[h, :dim].to(dtype) / math.sqrt(dim)

    def forward(self, x: torch.Tensor, *, batch_size: int = 128) -> torch.Tensor:
        """Features [n, n_components] of images x [n, C, H, W] or [n, C*H*W] (dtype of x; half
        types computed in float32).

        Images are processed ``batch_size`` at a time (memory O(batch_size H W
        pixel_dim q^2)).
        """
        out_dtype = x.dtype
        x = x.reshape(x.shape[0], *self.image_shape).to(compute_dtype(x.dtype))
        return torch.cat(
            [self._features(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        ).to(out_dtype)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        w_std = math.sqrt(self.weight_var)
        ntk = self.kernel == "ntk"
        # Per-pixel exact variances in float64 (inputs of any magnitude), features in x's dtype.
        top = x.abs().amax().clamp_min(torch.finfo(dtype).tiny)
        x64 = x.to(torch.float64)
        variances = pixel_variances(x64, self.depth, self.q, activation=self.activation,
                                    weight_var=self.weight_var, bias_var=self.bias_var,
                                    input_var=self.input_var, padding=self.padding)
        psi = (x / top).flatten(2).transpose(1, 2)  # [n, P, C]; scale-free directions
        phi = None
        for h in range(self.depth):
            nb_psi = self._neighbourhoods(psi)
            psi_f = w_std * self.conv_psi[h](nb_psi)
            if h == 0:
                psi_f = psi_f * math.sqrt(self.input_var) * top
            psi_f = psi_f + self._bias(h, psi_f.shape[-1], dtype)
            if ntk:
                # Theta_f = Sigma_f + weight_var conv(Theta_g); Theta_f^(1) = Sigma_f^(1).
                phi_f = psi_f if phi is None else (
                    w_std * self.conv_phi[h - 1](self._neighbourhoods(phi)) + psi_f
                )
            u, _ = unit_rows(psi_f)
            r = variances[h].flatten(1).sqrt()  # [n, P] float64
            psi = self.series[h](u, radial_coefficients(self.activation, r, self.degree))
            if ntk:
                dpsi = self.derivative_series[h](
                    u, radial_coefficients(self.activation, r, self.degree, derivative=True)
                )
                phi = self.products[h](phi_f, dpsi)
        pooled = [psi, phi] if ntk else [psi]
        if self.readout == "gap":
            pooled = [p.mean(1) for p in pooled]
        else:
            pooled = [p.flatten(1) / math.sqrt(p.shape[1]) for p in pooled]
        out = w_std * self.pool[0](pooled[0]) + self._bias(self.depth, self.d_out, dtype)
        if ntk:
            out = out + w_std * self.pool[1](pooled[1])
        return out


class CNTKSketch(RandomFeaturesTransformer):
    """CNTK Sketch features of a conv net of any activation (scikit-learn transformer).

    ``Z @ Z.T`` approximates :func:`conv_neural_kernel` (same ``activation``,
    ``depth``, ``kernel``, ``filter_size``, ``weight_std``, ``bias_std``,
    ``padding``, ``readout``) in time linear in the number of pixels: per-pixel
    sketches of the recursion (:class:`CNTKSketchMap`). Error: the Hermite
    truncation at ``degree`` (exact on the diagonal) plus sketching error
    falling with ``pixel_dim`` and ``n_components``.

    Parameters
    ----------
    activation : name in ACTIVATIONS, Activation or callable, default "relu"
    depth : int >= 1, default 1
        Convolution + activation layers.
    kernel : {"ntk", "nngp"}, default "ntk"
    filter_size : odd int, default 3
    weight_std, bias_std : float >= 0, default 1.0, 0.0
    padding : {"zeros", "circular"}, default "zeros"
    readout : {"gap", "flatten"}, default "gap"
    n_components : int >= 1, default 256
    image_shape : (C, H, W) or None, default None
        Layout of each row of X (C-major, like ``images.reshape(n, -1)``).
        None: one channel, square if n_features is a square, else 1 x n_features.
    pixel_dim : int or None, default None
        Per-pixel feature dimension (``min(n_components, 64)`` if None).
    degree : int in [1, 64], default 6
        Hermite truncation degree.
    verbose : int, default 0
        ``>= 1``: show the progress of ``transform`` (blocks of 256 rows) on a
        tqdm bar (kept when ``>= 2``), scikit-learn's convention.
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

    def __init__(self, *, activation="relu", depth=1, kernel="ntk", filter_size=3, weight_std=1.0,
                 bias_std=0.0, padding="zeros", readout="gap", n_components=256, image_shape=None,
                 pixel_dim=None, degree=6, random_state=None, verbose=0):
        self.activation = activation
        self.depth = depth
        self.kernel = kernel
        self.filter_size = filter_size
        self.weight_std = weight_std
        self.bias_std = bias_std
        self.padding = padding
        self.readout = readout
        self.n_components = n_components
        self.image_shape = image_shape
        self.pixel_dim = pixel_dim
        self.degree = degree
        self.random_state = random_state
        self.verbose = verbose

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

    def _check_params(self, n_features) -> Activation:
        act = check_network_params(self.activation, self.depth, self.kernel, self.weight_std,
                                   self.bias_std, "ntk")
        _check_conv(self.filter_size, self.padding, self.readout)
        check_int("n_components", self.n_components, min=1)
        check_int("degree", self.degree, min=1, max=64)
        check_int("verbose", self.verbose, min=0)
        if self.pixel_dim is not None:
            check_int("pixel_dim", self.pixel_dim, min=1)
        self._resolved_image_shape(n_features)
        return act

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
            activation=self._check_params(n_features),
            weight_var=float(self.weight_std) ** 2,
            bias_var=float(self.bias_std) ** 2,
            padding=self.padding,
            readout=self.readout,
            generator=generator,
        )
