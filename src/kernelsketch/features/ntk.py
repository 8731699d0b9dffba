"""Fully-connected ReLU NTK / NNGP: exact kernels and randomized feature maps.

Bias-free ReLU network (NTK parameterisation, ReLU scaled by sqrt(2)) with
``depth`` = L hidden layers: with ``Sigma^(0) = <x, y>`` and cosines
``c^(h) = Sigma^(h) / (|x| |y|)``,
``Sigma^(h) = |x| |y| kappa1(c^(h-1))`` and
``Theta^(h) = Theta^(h-1) kappa0(c^(h-1)) + Sigma^(h)`` (Arora et al. 2019,
Eq. (3)-(5)); the NTK / NNGP are ``Theta^(L)`` / ``Sigma^(L)``, homogeneous, with
``Theta^(L)(x, x) = (L+1)|x|^2``.

- :func:`ntk_relu`, :func:`nngp_relu`: exact kernels [n, m] of X [n, d], Y [m, d]
  (torch or numpy; the oracles of the sketches).
- :class:`NTKRandomFeatures`: arc-cosine random features with sketched tensor
  products (arXiv 2104.01351, Alg. 1), relative error ``O(depth / sqrt(n_components))``.
- :class:`NTKSketch`: non-negative polynomial fit + PolySketch of all powers +
  SRHT (arXiv 2106.07880, Alg. 1), error ``O(1/sqrt(n_components))`` plus the fit
  error.

Theory (the recursions, the layer-by-layer features, leverage-sampled directions):
docs/neural_kernels.md.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kernelsketch._checks import check_choice, check_int
from kernelsketch.features._arccos import as_tensor_pair, cosines, kappa0, kappa1, return_like
from kernelsketch.features._base import RandomFeaturesTransformer
from kernelsketch.features._powerseries import (
    PowerSeriesSketch,
    fit_nonnegative_polynomial,
    unit_rows,
)
from kernelsketch.sketch.leverage import ridge_leverage_scores
from kernelsketch.sketch.projections import SRHT, GaussianSketch
from kernelsketch.sketch.sampling import importance_sample, resolve_generator
from kernelsketch.sketch.tensor import Degree2Sketch

__all__ = [
    "NTKRandomFeatureMap",
    "NTKRandomFeatures",
    "NTKSketch",
    "NTKSketchMap",
    "leverage_sampled_directions",
    "nngp_relu",
    "ntk_relu",
    "relu_nngp_of_cosine",
    "relu_ntk_of_cosine",
]

KERNELS = ("ntk", "nngp")


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


# ----------------------------------------------------------------------------- NTK random features


def _pad_to(x: torch.Tensor, d: int) -> torch.Tensor:
    return nn.functional.pad(x, (0, d - x.shape[-1]))


def leverage_sampled_directions(X, m, *, pool_factor=4, ridge=1e-3, generator=None, max_rows=1000):
    """First-layer directions sampled by ridge leverage scores of order-1 arc-cosine features.

    From a pool of ``pool_factor * m`` Gaussian directions, ``m`` are drawn with
    probability proportional to the ridge leverage scores of their features
    ``sqrt(2) relu(X w)`` on (up to ``max_rows`` of) the rows of ``X`` [n, d] (ridge
    ``ridge * trace(K)``), with importance weights (arXiv 2104.01351, Sec. 4): the
    weighted features are unbiased for the exact arc-cosine kernel. All draws come
    from ``generator``. Theory: docs/neural_kernels.md.

    Returns
    -------
    matrix : Tensor [d, m]
        Directions scaled by sqrt(weight / M): relu(x @ matrix) * sqrt(2) are the features.
    step_scale : Tensor [m]
        sqrt(weight / M), the per-feature scale of the order-0 (step) features.
    """
    rows = X[torch.randperm(X.shape[0], generator=generator)[:max_rows]].to(torch.float64)
    pool = pool_factor * m
    W = torch.randn(X.shape[1], pool, generator=generator, dtype=torch.float64)
    A = math.sqrt(2.0 / pool) * torch.relu(rows @ W)  # [n, M], K = A A^T
    lam = ridge * float((A * A).sum()) + 1e-12
    scores = ridge_leverage_scores(A.T.contiguous(), lam)
    idx, weights = importance_sample(scores + 1e-12 * scores.max(), m, generator=generator)
    scale = (weights / pool).sqrt()
    return W[:, idx] * scale, scale


class NTKRandomFeatureMap(nn.Module):
    """Torch feature map of NTK random features (arc-cosine features + sketched tensor products).

    Layer ``h`` maps ``(Phi, Psi)`` to ``Phi' = sqrt(2/m) relu(Phi W_h)`` (order-1
    arc-cosine, ``E <Phi', Phi'> = Sigma^(h)``) and
    ``Psi' = T_h(Psi ⊗ sqrt(2/m) step(Phi W_h)) + R_h(Phi')`` (``E <Psi', Psi'> =
    Theta^(h)``), ``T_h`` a :class:`~kernelsketch.sketch.tensor.Degree2Sketch` and
    ``R_h`` an SRHT (after arXiv 2104.01351, Alg. 1; the paper concatenates the two
    parts, here they are summed). ``[..., d_in] -> [..., d_out]`` (``n_arccos`` for
    the NNGP), dtype of the input. Theory: docs/neural_kernels.md.

    Parameters
    ----------
    d_in : int
    depth : int >= 1
    n_arccos : int
        Arc-cosine features per layer m (the NNGP output dimension).
    d_out : int
        NTK output dimension (ignored for NNGP).
    kernel : {"ntk", "nngp"}
    tensor_sketch : {"srht", "countsketch"}
    seed : int, optional
    generator : torch.Generator, optional
        Source of the random directions and sketches (one of the two; neither:
        torch's global generator).
    leverage_data : Tensor [n, d_in], optional
        If given, the first layer's directions are sampled by ridge leverage
        scores on these rows (:func:`leverage_sampled_directions`).
    """

    def __init__(
        self,
        d_in,
        *,
        depth,
        n_arccos,
        d_out,
        kernel,
        tensor_sketch="srht",
        seed=None,
        generator=None,
        leverage_data=None,
    ):
        super().__init__()
        generator = resolve_generator(seed, generator)
        self.kernel = kernel
        dims = [d_in] + [n_arccos] * depth
        self.arccos = nn.ModuleList(
            GaussianSketch(dims[h], n_arccos, generator=generator) for h in range(depth)
        )
        # Per-feature scale of the step features of each layer: 1/sqrt(m) for Gaussian directions.
        step_scale = torch.full((depth, n_arccos), 1.0 / math.sqrt(n_arccos), dtype=torch.float64)
        if leverage_data is not None:
            matrix, step_scale[0] = leverage_sampled_directions(
                leverage_data, n_arccos, generator=generator
            )
            self.arccos[0].matrix = matrix.to(self.arccos[0].matrix.dtype)
        self.register_buffer("step_scale", step_scale)
        self.tensor = nn.ModuleList()
        self.linear = nn.ModuleList()
        if kernel == "ntk":
            kind = "srht" if tensor_sketch == "srht" else "tensorsketch"
            for h in range(depth):
                width = max(n_arccos, d_in if h == 0 else d_out)
                self.tensor.append(Degree2Sketch(width, d_out, kind=kind, generator=generator))
                self.linear.append(SRHT(n_arccos, d_out, generator=generator))
        self.n_arccos = n_arccos
        self.d_out = d_out if kernel == "ntk" else n_arccos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features [..., d_out] of x [..., d_in] (dtype of x)."""
        phi, psi = x, x
        for h, directions in enumerate(self.arccos):
            # GaussianSketch entries are N(0, 1/m): u = Phi W / sqrt(m), W ~ N(0, 1).
            u = directions(phi)
            phi = math.sqrt(2.0) * torch.relu(u)
            if self.kernel == "ntk":
                dphi = math.sqrt(2.0) * self.step_scale[h].to(x.dtype) * (u > 0).to(x.dtype)
                t = self.tensor[h]
                psi = t(_pad_to(psi, t.d_in), _pad_to(dphi, t.d_in)) + self.linear[h](phi)
        return psi if self.kernel == "ntk" else phi


class NTKRandomFeatures(RandomFeaturesTransformer):
    """Random features of the fully-connected ReLU NTK / NNGP (scikit-learn transformer).

    Arc-cosine random features of orders 1 and 0, layer by layer, with the
    NTK recursion's products sketched by TensorSRHT or TensorSketch
    (:class:`NTKRandomFeatureMap`). At depth 1 the features are unbiased;
    deeper, each layer is unbiased given the previous one. ``Z @ Z.T``
    approaches :func:`ntk_relu` (or :func:`nngp_relu`) as ``n_components``
    grows, with relative error ``O(depth / sqrt(n_components))``.

    Parameters
    ----------
    depth : int >= 1, default 1
    n_components : int >= 1, default 256
        Output dimension.
    kernel : {"ntk", "nngp"}, default "ntk"
    n_arccos : int or None, default None
        Arc-cosine features per hidden layer for the NTK (default
        ``n_components``). For the NNGP the output is the last layer's
        arc-cosine features, so it must be None or ``n_components``.
    tensor_sketch : {"srht", "countsketch"}, default "srht"
    leverage_sampling : bool, default False
        Sample the first layer's directions by ridge leverage scores of the
        arc-cosine features on the training data (data-dependent; see
        :func:`leverage_sampled_directions`) instead of i.i.d. Gaussian.
    random_state : int, RandomState or None

    Attributes
    ----------
    feature_map_ : NTKRandomFeatureMap
        Fitted torch map, usable on GPU batches after ``.to("cuda")``.
    n_features_in_ : int

    References
    ----------
    Han, Avron, Shoham, Kim, Shin, "Random Features for the Neural Tangent
    Kernel", arXiv 2104.01351.
    """

    @property
    def _fit_reads_data(self) -> bool:  # leverage sampling reads the rows (Dask fit refused)
        return bool(self.leverage_sampling)

    def __init__(
        self,
        *,
        depth=1,
        n_components=256,
        kernel="ntk",
        n_arccos=None,
        tensor_sketch="srht",
        leverage_sampling=False,
        random_state=None,
    ):
        self.depth = depth
        self.n_components = n_components
        self.kernel = kernel
        self.n_arccos = n_arccos
        self.tensor_sketch = tensor_sketch
        self.leverage_sampling = leverage_sampling
        self.random_state = random_state

    def _check_params(self, n_features):
        check_int("depth", self.depth, min=1)
        check_int("n_components", self.n_components, min=1)
        check_choice("kernel", self.kernel, KERNELS)
        check_choice("tensor_sketch", self.tensor_sketch, ("srht", "countsketch"))
        check_choice("leverage_sampling", self.leverage_sampling, (False, True))
        if self.n_arccos is not None:
            check_int("n_arccos", self.n_arccos, min=1)
            if self.kernel == "nngp" and self.n_arccos != self.n_components:
                raise ValueError(
                    f"n_arccos must be None or n_components={self.n_components} for "
                    f"kernel='nngp' (the output is the arc-cosine features), got {self.n_arccos}"
                )

    def _make_feature_map(self, n_features, generator, X):
        return NTKRandomFeatureMap(
            n_features,
            depth=self.depth,
            n_arccos=self.n_arccos or self.n_components,
            d_out=self.n_components,
            kernel=self.kernel,
            tensor_sketch=self.tensor_sketch,
            generator=generator,
            leverage_data=X if self.leverage_sampling else None,
        )


# ----------------------------------------------------------------------------- NTK Sketch


class NTKSketchMap(nn.Module):
    """Torch feature map of NTK Sketch: ``phi(x) = |x| S(concat_j sqrt(c_j) PolySketch_j(x/|x|))``.

    ``c_j >= 0`` are a non-negative least-squares polynomial fit of degree
    ``degree`` to the NTK (or NNGP) function of the cosine (cached per
    ``(kernel, depth, degree)``), so ``E[<phi(x), phi(y)>] = |x||y| sum_j c_j cos^j``,
    which is within the fit error of the exact kernel.

    Parameters
    ----------
    d_in : int
    depth : int >= 1
    n_components : int
        Output dimension.
    degree : int >= 1
        Polynomial degree of the fit (and of the PolySketch tree).
    kernel : {"ntk", "nngp"}
    poly_dim : int
        Dimension of each power's PolySketch before the final SRHT.
    kind : PolySketch node kind
    seed : int, optional
    generator : torch.Generator, optional
        Source of the sketches (one of the two; neither: torch's global generator).

    References
    ----------
    Zandieh, Han, Avron, Shoham, Kim, Shin, "Scaling Neural Tangent Kernels via
    Sketching and Random Features", NeurIPS 2021 (arXiv 2106.07880), Alg. 1.
    """

    def __init__(
        self,
        d_in,
        *,
        depth,
        n_components,
        degree,
        kernel,
        poly_dim,
        kind="srht",
        seed=None,
        generator=None,
    ):
        super().__init__()
        generator = resolve_generator(seed, generator)
        fn = relu_ntk_of_cosine if kernel == "ntk" else relu_nngp_of_cosine
        coef = fit_nonnegative_polynomial((kernel, depth), lambda t: fn(t, depth), degree)
        self.register_buffer("coef", coef)
        self.series = PowerSeriesSketch(
            d_in, degree, n_components, poly_dim=poly_dim, kind=kind, generator=generator
        )
        self.d_out = n_components

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features [..., n_components] of x [..., d_in] (dtype of x)."""
        u, r = unit_rows(x)
        return r * self.series(u, self.coef.sqrt().to(x.dtype))


class NTKSketch(RandomFeaturesTransformer):
    """NTK Sketch features of the fully-connected ReLU NTK / NNGP (scikit-learn transformer).

    ``Z = transform(X)`` has ``Z @ Z.T`` approximating :func:`ntk_relu` (or
    :func:`nngp_relu`) of depth ``depth``: a non-negative polynomial fit of
    the kernel's cosine function, PolySketch of all powers and a final SRHT.
    The expected features reproduce the fitted polynomial kernel; the
    relative error falls like ``1/sqrt(n_components)`` plus the fit error
    (about 1-3% of K(x, x) for degree 8-16).

    Parameters
    ----------
    depth : int >= 1, default 1
        Hidden ReLU layers.
    n_components : int >= 1, default 256
        Output dimension.
    degree : int >= 1, default 8
        Degree of the polynomial fit.
    kernel : {"ntk", "nngp"}, default "ntk"
    poly_dim : int or None, default None
        Per-power PolySketch dimension before the final SRHT (``2 * n_components``
        if None: the per-power sketches' variance dominates at equal sizes).
    random_state : int, RandomState or None

    Attributes
    ----------
    feature_map_ : NTKSketchMap
        Fitted torch map, usable on GPU batches after ``.to("cuda")``.
    n_features_in_ : int

    References
    ----------
    Zandieh et al., arXiv 2106.07880.
    """

    _fit_reads_data = False  # the map depends on n_features only: fit takes Dask arrays

    def __init__(
        self, *, depth=1, n_components=256, degree=8, kernel="ntk", poly_dim=None, random_state=None
    ):
        self.depth = depth
        self.n_components = n_components
        self.degree = degree
        self.kernel = kernel
        self.poly_dim = poly_dim
        self.random_state = random_state

    def _check_params(self, n_features):
        check_int("depth", self.depth, min=1)
        check_int("n_components", self.n_components, min=1)
        check_int("degree", self.degree, min=1, max=64)
        check_choice("kernel", self.kernel, KERNELS)
        if self.poly_dim is not None:
            check_int("poly_dim", self.poly_dim, min=1)

    def _make_feature_map(self, n_features, generator, X):
        return NTKSketchMap(
            n_features,
            depth=self.depth,
            n_components=self.n_components,
            degree=self.degree,
            kernel=self.kernel,
            poly_dim=self.poly_dim or 2 * self.n_components,
            generator=generator,
        )
