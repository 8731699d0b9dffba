"""Fully connected NTK / NNGP: the ReLU oracles, NTK random features and NTK Sketch.

- :func:`ntk_relu`, :func:`nngp_relu`: the bias-free ReLU network of Arora et al.
  2019 (Eq. (3)-(5); ReLU scaled by sqrt(2), first layer ``<x, y>``):
  ``ntk_relu(X) = d/2 * neural_kernel(X, weight_std=sqrt(2))``, thin wrappers of
  :func:`~kernelsketch.features.neural_kernel`; homogeneous,
  ``ntk_relu(x, x) = (depth + 1)|x|^2``, ``nngp_relu(x, x) = |x|^2``.
- :class:`NTKRandomFeatures`: random features of
  :func:`~kernelsketch.features.neural_kernel` for any activation, weight and bias
  variances (arXiv 2104.01351, Alg. 1, generalised), relative error
  ``O(depth / sqrt(n_components))``.
- :class:`NTKSketch`: non-negative polynomial fit of the kernel's cosine function
  (ReLU-family activations, no bias) sketched by a Horner chain of
  TensorSketches (arXiv 2106.07880, Alg. 1, with a Horner chain for PolySketch),
  error ``O(1/sqrt(n_components))`` plus the fit error.

Theory (recursions, the layer-by-layer features, leverage-sampled directions, the
Horner chain and its measured speed): docs/neural_kernels.md.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kernelsketch._checks import check_choice, check_int
from kernelsketch.features._base import RandomFeaturesTransformer
from kernelsketch.features._horner import HornerSketch
from kernelsketch.features._powerseries import fit_nonnegative_polynomial, unit_rows
from kernelsketch.features.activations import (
    ACTIVATIONS,
    Activation,
    check_network_params,
)
from kernelsketch.features.neural import kernel_recursion, network_kernel
from kernelsketch.sketch.leverage import ridge_leverage_scores
from kernelsketch.sketch.projections import SRHT, compute_dtype, random_signs
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
]

KERNELS = ("ntk", "nngp")


def ntk_relu(X, Y=None, *, depth: int = 1):
    """Exact neural tangent kernel of a bias-free fully connected ReLU network.

    ``Theta^(L)`` of Arora et al. 2019, Eq. (3)-(5): ReLU scaled by sqrt(2), first
    layer ``Sigma^(0) = <x, y>``; equals ``d/2 * neural_kernel(X, Y, depth=depth,
    weight_std=sqrt(2))``. Inputs of any magnitude (the kernel is homogeneous).

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
        ``K(x, x) = (L+1)|x|^2``.

    References
    ----------
    Jacot, Gabriel, Hongler, "Neural Tangent Kernel", NeurIPS 2018.
    Arora et al., "On Exact Computation with an Infinitely Wide Neural Net", NeurIPS 2019.
    """
    check_network_params("relu", depth, "ntk", 1.0, 0.0, "ntk")
    return network_kernel(X, Y, ACTIVATIONS["relu"], depth=depth, kernel="ntk", input_var=1.0,
                          weight_var=2.0, bias_var=0.0)


def nngp_relu(X, Y=None, *, depth: int = 1):
    """Exact NNGP (conjugate / arc-cosine) kernel of the network of :func:`ntk_relu`.

    ``Sigma^(L)(x, y) = |x| |y| kappa1^{(L)}(cos)`` (Cho & Saul 2009);
    ``K(x, x) = |x|^2``; equals ``d/2 * neural_kernel(X, Y, depth=depth,
    kernel="nngp", weight_std=sqrt(2))``. Same parameters and return as :func:`ntk_relu`.
    """
    check_network_params("relu", depth, "nngp", 1.0, 0.0, "ntk")
    return network_kernel(X, Y, ACTIVATIONS["relu"], depth=depth, kernel="nngp", input_var=1.0,
                          weight_var=2.0, bias_var=0.0)


# ----------------------------------------------------------------------------- NTK random features


def _pad_to(x: torch.Tensor, d: int) -> torch.Tensor:
    return nn.functional.pad(x, (0, d - x.shape[-1]))


def _first_layer_inputs(x: torch.Tensor, input_var: float, bias_var: float) -> torch.Tensor:
    """``[sqrt(input_var) x, bias_std]``: inner products are ``K^(0) = input_var <x, y> + bias_var``."""
    bias = torch.full((*x.shape[:-1], 1), math.sqrt(bias_var), dtype=x.dtype, device=x.device)
    return torch.cat([math.sqrt(input_var) * x, bias], -1)


def leverage_sampled_directions(X, m, *, activation=None, pool_factor=4, ridge=1e-3,
                                generator=None, max_rows=1000):
    """First-layer directions sampled by ridge leverage scores of their random features.

    From a pool of ``pool_factor * m`` Gaussian directions w, ``m`` are drawn with
    probability proportional to the ridge leverage scores of the features
    ``sigma(X w)`` on (up to ``max_rows`` of) the rows of ``X`` [n, d] (ridge
    ``ridge * trace(K)``), with importance weights (arXiv 2104.01351, Sec. 4): the
    weighted features are unbiased for the dual kernel ``E_w[sigma(<w, x>) sigma(<w, y>)]``.
    ``activation`` is an elementwise function (default ReLU). All draws come
    from ``generator``. Theory: docs/neural_kernels.md.

    Returns
    -------
    directions : Tensor [d, m] (float64)
        The sampled directions w (unscaled): the features are ``sigma(x @ directions) * scale``.
    scale : Tensor [m] (float64)
        ``sqrt(weight / M)`` per direction (M the pool size).
    """
    activation = torch.relu if activation is None else activation
    rows = X[torch.randperm(X.shape[0], generator=generator)[:max_rows]].to(torch.float64)
    pool = pool_factor * m
    W = torch.randn(X.shape[1], pool, generator=generator, dtype=torch.float64)
    A = activation(rows @ W) / math.sqrt(pool)  # [n, M], K = A A^T
    lam = ridge * float((A * A).sum()) + 1e-12
    scores = ridge_leverage_scores(A.T.contiguous(), lam)
    # Every direction stays possible; all-zero features on the rows: uniform sampling.
    probs = scores + 1e-12 * scores.max() if scores.max() > 0 else torch.ones_like(scores)
    idx, weights = importance_sample(probs, m, generator=generator)
    return W[:, idx], (weights / pool).sqrt()


class NTKRandomFeatureMap(nn.Module):
    """Torch feature map of NTK / NNGP random features of any activation.

    With ``phi_0 = psi_0 = [sqrt(input_var) x, bias_std]`` (so
    ``<phi_0, phi_0'> = K^(0)``) and i.i.d. ``N(0, I)`` directions ``W_h``, layer h
    maps ``z = phi_{h-1} W_h`` (samples of the pre-activation, covariance ``K^(h-1)``) to

        t_h   = sigma(z) / sqrt(m),   dt_h = sigma'(z) / sqrt(m)       (E <.,.> = T, T')
        phi_h = weight_std t_h + bias_std xi_h / sqrt(m)               (E <.,.> = K^(h))
        psi_h = weight_std T_h(psi_{h-1} ⊗ dt_h) + R_h(phi_h)          (E <.,.> = Theta^(h))

    with random signs ``xi_h``, ``T_h`` a :class:`~kernelsketch.sketch.tensor.Degree2Sketch`
    and ``R_h`` an SRHT (after arXiv 2104.01351, Alg. 1; the paper concatenates the two
    parts, here they are summed; for ``parameterization="standard"``,
    ``psi_0 = 0`` and ``R_h(t_h)``). ``[..., d_in] -> [..., d_out]`` (``n_arccos`` for
    the NNGP), dtype of the input. Theory: docs/neural_kernels.md.

    Parameters
    ----------
    d_in : int
    depth : int >= 1
    n_arccos : int
        Random features per layer m (the NNGP output dimension).
    d_out : int
        NTK output dimension (ignored for NNGP).
    kernel : {"ntk", "nngp"}
    activation : Activation, default ReLU
    weight_var, bias_var : float
        ``weight_std**2``, ``bias_std**2``.
    input_var : float or None
        First-layer scale (``K^(0) = input_var <x, y> + bias_var``); None: ``weight_var / d_in``.
    parameterization : {"ntk", "standard"}
    tensor_sketch : {"srht", "countsketch"}
    seed : int, optional
    generator : torch.Generator, optional
        Source of the random directions and sketches (one of the two; neither:
        torch's global generator).
    leverage_data : Tensor [n, d_in], optional
        If given, the first layer's directions are sampled by ridge leverage
        scores on these rows (:func:`leverage_sampled_directions`).
    """

    def __init__(self, d_in, *, depth, n_arccos, d_out, kernel, activation=None, weight_var=1.0,
                 bias_var=0.0, input_var=None, parameterization="ntk", tensor_sketch="srht",
                 seed=None, generator=None, leverage_data=None):
        super().__init__()
        generator = resolve_generator(seed, generator)
        self.kernel, self.parameterization = kernel, parameterization
        self.activation = ACTIVATIONS["relu"] if activation is None else activation
        self.weight_var, self.bias_var = float(weight_var), float(bias_var)
        self.input_var = float(weight_var / d_in if input_var is None else input_var)
        m = n_arccos
        dims = [d_in + 1] + [m] * depth
        for h in range(depth):
            self.register_buffer(
                f"directions{h}", torch.randn(dims[h], m, generator=generator, dtype=torch.float64)
            )
        scale = torch.full((depth, m), 1.0 / math.sqrt(m), dtype=torch.float64)
        if leverage_data is not None:
            rows = _first_layer_inputs(leverage_data.to(torch.float64), self.input_var,
                                       self.bias_var)
            self.directions0, scale[0] = leverage_sampled_directions(
                rows, m, activation=self.activation, generator=generator
            )
        self.register_buffer("scale", scale)
        self.register_buffer("bias_signs", random_signs((depth, m), generator).double()
                             / math.sqrt(m))
        self.tensor = nn.ModuleList()
        self.linear = nn.ModuleList()
        if kernel == "ntk":
            kind = "srht" if tensor_sketch == "srht" else "tensorsketch"
            for h in range(depth):
                width = max(m, d_in + 1 if h == 0 else d_out)
                self.tensor.append(Degree2Sketch(width, d_out, kind=kind, generator=generator))
                self.linear.append(SRHT(m, d_out, generator=generator))
        self.depth, self.n_arccos = depth, m
        self.d_out = d_out if kernel == "ntk" else m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features [..., d_out] of x [..., d_in] (dtype of x; half types in float32)."""
        out_dtype, x = x.dtype, x.to(compute_dtype(x.dtype))
        w_std, b_std = math.sqrt(self.weight_var), math.sqrt(self.bias_var)
        phi = _first_layer_inputs(x, self.input_var, self.bias_var)
        ntk = self.kernel == "ntk"
        psi = phi if self.parameterization == "ntk" else None
        for h in range(self.depth):
            z = phi @ getattr(self, f"directions{h}").to(x.dtype)
            scale = self.scale[h].to(x.dtype)
            t = self.activation(z) * scale
            phi = w_std * t + b_std * self.bias_signs[h].to(x.dtype)
            if ntk:
                new = self.linear[h](phi if self.parameterization == "ntk" else t)
                if psi is None:
                    psi = new
                else:
                    dt = self.activation.grad(z) * scale
                    T = self.tensor[h]
                    psi = w_std * T(_pad_to(psi, T.d_in), _pad_to(dt, T.d_in)) + new
        return (psi if ntk else phi).to(out_dtype)


class NTKRandomFeatures(RandomFeaturesTransformer):
    """Random features of the NTK / NNGP of a fully connected network (scikit-learn transformer).

    Random features of the activation and its derivative, layer by layer, with
    the NTK recursion's products sketched by TensorSRHT or TensorSketch
    (:class:`NTKRandomFeatureMap`). ``Z @ Z.T`` approaches
    :func:`~kernelsketch.features.neural_kernel` with the same ``activation``,
    ``depth``, ``kernel``, ``weight_std``, ``bias_std`` and ``parameterization``
    as ``n_components`` grows, with relative error ``O(depth / sqrt(n_components))``.
    At depth 1 the features are unbiased; deeper, each layer is unbiased given
    the previous one.

    Parameters
    ----------
    activation : name in ACTIVATIONS, Activation or callable, default "relu"
        A callable must be differentiable by torch.autograd for the NTK (or be
        an ``Activation`` with ``derivative``).
    depth : int >= 1, default 1
    kernel : {"ntk", "nngp"}, default "ntk"
    weight_std, bias_std : float >= 0, default 1.0, 0.0
    parameterization : {"ntk", "standard"}, default "ntk"
    n_components : int >= 1, default 256
        Output dimension.
    n_arccos : int or None, default None
        Random features per hidden layer for the NTK (default
        ``n_components``). For the NNGP the output is the last layer's
        features, so it must be None or ``n_components``.
    tensor_sketch : {"srht", "countsketch"}, default "srht"
    leverage_sampling : bool, default False
        Sample the first layer's directions by ridge leverage scores of the
        random features on the training data (data-dependent; see
        :func:`leverage_sampled_directions`) instead of i.i.d. Gaussian.
    verbose : int, default 0
        ``>= 1``: show the progress of ``transform`` (blocks of 256 rows) on a
        tqdm bar (kept when ``>= 2``), scikit-learn's convention.
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

    def __init__(self, *, activation="relu", depth=1, kernel="ntk", weight_std=1.0, bias_std=0.0,
                 parameterization="ntk", n_components=256, n_arccos=None, tensor_sketch="srht",
                 leverage_sampling=False, random_state=None, verbose=0):
        self.activation = activation
        self.depth = depth
        self.kernel = kernel
        self.weight_std = weight_std
        self.bias_std = bias_std
        self.parameterization = parameterization
        self.n_components = n_components
        self.n_arccos = n_arccos
        self.tensor_sketch = tensor_sketch
        self.leverage_sampling = leverage_sampling
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self, n_features):
        check_network_params(self.activation, self.depth, self.kernel, self.weight_std,
                             self.bias_std, self.parameterization)
        check_int("n_components", self.n_components, min=1)
        check_choice("tensor_sketch", self.tensor_sketch, ("srht", "countsketch"))
        check_choice("leverage_sampling", self.leverage_sampling, (False, True))
        check_int("verbose", self.verbose, min=0)
        if self.n_arccos is not None:
            check_int("n_arccos", self.n_arccos, min=1)
            if self.kernel == "nngp" and self.n_arccos != self.n_components:
                raise ValueError(
                    f"n_arccos must be None or n_components={self.n_components} for "
                    f"kernel='nngp' (the output is the random features), got {self.n_arccos}"
                )

    def _make_feature_map(self, n_features, generator, X):
        act = check_network_params(self.activation, self.depth, self.kernel, self.weight_std,
                                   self.bias_std, self.parameterization)
        return NTKRandomFeatureMap(
            n_features,
            depth=self.depth,
            n_arccos=self.n_arccos or self.n_components,
            d_out=self.n_components,
            kernel=self.kernel,
            activation=act,
            weight_var=float(self.weight_std) ** 2,
            bias_var=float(self.bias_std) ** 2,
            parameterization=self.parameterization,
            tensor_sketch=self.tensor_sketch,
            generator=generator,
            leverage_data=X if self.leverage_sampling else None,
        )


# ----------------------------------------------------------------------------- NTK Sketch


def _check_zonal(act: Activation, bias_std) -> None:
    if act.homogeneity != 1 or act.dual is None or float(bias_std) != 0.0:
        raise ValueError(
            "NTKSketch needs a kernel |x| |y| f(cos): a ReLU-family activation (relu, leaky_relu, "
            f"abs or piecewise_linear(a, b)) and bias_std=0, got activation {act!r} and "
            f"bias_std={bias_std!r}; use ActivationKernelSketch or NTKRandomFeatures"
        )


def zonal_function(act: Activation, depth: int, kernel: str, weight_var: float,
                   parameterization: str):
    """``f(t)``: the kernel of unit-variance inputs (first-layer covariance ``[[1, t], [t, 1]]``)."""

    def f(t: torch.Tensor) -> torch.Tensor:
        one = torch.ones_like(t)
        return kernel_recursion(act, one, one, t, depth=depth, kernel=kernel,
                                weight_var=weight_var, bias_var=0.0,
                                parameterization=parameterization)

    return f


class NTKSketchMap(nn.Module):
    """Torch feature map of NTK Sketch: ``phi(x) = sqrt(input_var) |x| H(x/|x|; sqrt(c))``.

    ``c_j >= 0`` are a non-negative least-squares polynomial fit of degree
    ``degree`` to the kernel's cosine function ``f`` (:func:`zonal_function`; cached
    per activation and network), so
    ``E[<phi(x), phi(y)>] = input_var |x||y| sum_j c_j cos^j``, within the fit
    error of the exact kernel ``input_var |x||y| f(cos)`` of a bias-free network
    of a positively homogeneous activation; ``H`` is a :class:`HornerSketch`.

    Parameters
    ----------
    d_in : int
    depth : int >= 1
    n_components : int
        Output dimension.
    degree : int >= 1
        Polynomial degree of the fit (and of the Horner chain).
    kernel : {"ntk", "nngp"}
    activation : Activation, default ReLU (must be ReLU-family: piecewise linear)
    weight_var : float
    input_var : float or None
        None: ``weight_var / d_in``.
    parameterization : {"ntk", "standard"}
    seed : int, optional
    generator : torch.Generator, optional
        Source of the sketches (one of the two; neither: torch's global generator).

    References
    ----------
    Zandieh, Han, Avron, Shoham, Kim, Shin, "Scaling Neural Tangent Kernels via
    Sketching and Random Features", NeurIPS 2021 (arXiv 2106.07880), Alg. 1.
    """

    def __init__(self, d_in, *, depth, n_components, degree, kernel, activation=None,
                 weight_var=1.0, input_var=None, parameterization="ntk", seed=None,
                 generator=None):
        super().__init__()
        generator = resolve_generator(seed, generator)
        act = ACTIVATIONS["relu"] if activation is None else activation
        _check_zonal(act, 0.0)
        fn = zonal_function(act, depth, kernel, float(weight_var), parameterization)
        key = ("neural", act.key, depth, kernel, float(weight_var), parameterization)
        self.register_buffer("coef", fit_nonnegative_polynomial(key, fn, degree))
        self.input_var = float(weight_var / d_in if input_var is None else input_var)
        self.series = HornerSketch(d_in, degree, n_components, generator=generator)
        self.d_out = n_components

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features [..., n_components] of x [..., d_in] (dtype of x; half types in float32)."""
        u, r = unit_rows(x.to(compute_dtype(x.dtype)))
        return ((math.sqrt(self.input_var) * r) * self.series(u, self.coef.sqrt())).to(x.dtype)


class NTKSketch(RandomFeaturesTransformer):
    """NTK Sketch features of a bias-free ReLU-family network's NTK / NNGP (scikit-learn transformer).

    ``Z = transform(X)`` has ``Z @ Z.T`` approximating
    :func:`~kernelsketch.features.neural_kernel` (same ``activation``, ``depth``,
    ``kernel``, ``weight_std``, ``parameterization``; ``bias_std`` must be 0, so that
    the kernel is ``|x||y| f(cos)``): a non-negative polynomial fit of ``f``,
    sketched by a Horner chain of TensorSketches (:class:`NTKSketchMap`). The
    expected features reproduce the fitted polynomial kernel; the relative
    error falls like ``1/sqrt(n_components)`` plus the fit error (about 1-3%
    of K(x, x) for degree 8-16). For other activations or biases use
    :class:`~kernelsketch.features.ActivationKernelSketch` or :class:`NTKRandomFeatures`.

    Parameters
    ----------
    activation : {"relu", "leaky_relu", "abs"} or piecewise_linear(a, b), default "relu"
    depth : int >= 1, default 1
        Hidden layers.
    kernel : {"ntk", "nngp"}, default "ntk"
    weight_std : float >= 0, default 1.0
    bias_std : 0.0
        Only 0 (kept for a uniform signature with the other neural-kernel maps).
    parameterization : {"ntk", "standard"}, default "ntk"
    n_components : int >= 1, default 256
        Output dimension.
    degree : int in [1, 64], default 8
        Degree of the polynomial fit.
    verbose : int, default 0
        ``>= 1``: show the progress of ``transform`` (blocks of 256 rows) on a
        tqdm bar (kept when ``>= 2``), scikit-learn's convention.
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

    def __init__(self, *, activation="relu", depth=1, kernel="ntk", weight_std=1.0, bias_std=0.0,
                 parameterization="ntk", n_components=256, degree=8, random_state=None,
                 verbose=0):
        self.activation = activation
        self.depth = depth
        self.kernel = kernel
        self.weight_std = weight_std
        self.bias_std = bias_std
        self.parameterization = parameterization
        self.n_components = n_components
        self.degree = degree
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self, n_features):
        act = check_network_params(self.activation, self.depth, self.kernel, self.weight_std,
                                   self.bias_std, self.parameterization)
        _check_zonal(act, self.bias_std)
        check_int("verbose", self.verbose, min=0)
        check_int("n_components", self.n_components, min=1)
        check_int("degree", self.degree, min=1, max=64)

    def _make_feature_map(self, n_features, generator, X):
        return NTKSketchMap(
            n_features,
            depth=self.depth,
            n_components=self.n_components,
            degree=self.degree,
            kernel=self.kernel,
            activation=check_network_params(self.activation, self.depth, self.kernel,
                                            self.weight_std, self.bias_std,
                                            self.parameterization),
            weight_var=float(self.weight_std) ** 2,
            parameterization=self.parameterization,
            generator=generator,
        )
