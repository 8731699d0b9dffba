"""Exact infinite-width kernels (NNGP and NTK) of fully connected networks of any activation.

A network with ``depth`` = L hidden layers and a linear readout, in the
conventions of the NTK literature (Jacot et al. 2018; Lee et al. 2019): layer
l computes ``z^(l+1) = weight_std / sqrt(n_l) W^(l) sigma(z^(l)) + bias_std b^(l)`` with
standard normal ``W``, ``b`` (the first layer acts on x, of width n_0 = d). The
pre-activation covariances and the NTK follow

    K^(0) = weight_std^2 <x, y> / d + bias_std^2,            Theta^(0) = K^(0),
    K^(l) = weight_std^2 T(K^(l-1)) + bias_std^2,
    Theta^(l) = K^(l) + weight_std^2 T'(K^(l-1)) Theta^(l-1),   l = 1..L,

with ``T``, ``T'`` the duals of sigma and sigma' (:func:`~kernelsketch.features.activations.dual_pair`);
the NNGP is ``K^(L)`` and the NTK ``Theta^(L)`` (the readout included in both).
:func:`neural_kernel` evaluates them for X [n, d], Y [m, d]; :func:`dual_activation`
is the bias-free NNGP without the readout's 1/d (the dual map composed L times).
Theory (the recursion, the standard parameterization, rescaling, valid ranges):
docs/neural_kernels.md.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kernelsketch._checks import check_choice, check_float, check_int, check_same, check_tensor
from kernelsketch.features.activations import (
    DEFAULT_TOL,
    METHODS,
    Activation,
    check_network_params,
    dual_pair,
    variance_map,
)

__all__ = [
    "as_tensor_pair",
    "dual_activation",
    "empirical_kernel",
    "kernel_recursion",
    "neural_kernel",
    "rescaled_kernel",
    "return_like",
]


def as_tensor_pair(X, Y, *, ndim: int = 2) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validate an oracle's inputs; return (X, Y, was_numpy) as torch tensors.

    ``X`` and ``Y`` are torch tensors or numpy arrays of rank ``ndim`` with the
    same trailing shape; ``Y=None`` means ``Y = X`` (the same object is returned).
    """
    was_numpy = isinstance(X, np.ndarray)
    if was_numpy:
        X = torch.from_numpy(_float64("X", X))
    check_tensor("X", X, ndim=ndim)
    if Y is None:
        return X, X, was_numpy
    if isinstance(Y, np.ndarray):
        Y = torch.from_numpy(_float64("Y", Y)).to(X.dtype)
    check_tensor("Y", Y, ndim=ndim)
    check_same(("X", "Y"), (X, Y))
    if Y.shape[1:] != X.shape[1:]:
        raise ValueError(
            f"Y must have the trailing shape {list(X.shape[1:])} of X, got {list(Y.shape[1:])}"
        )
    return X, Y, was_numpy


def _float64(name: str, A: np.ndarray) -> np.ndarray:
    if A.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real (float, int or bool) array, got dtype {A.dtype}")
    return np.asarray(A, dtype=np.float64)


def return_like(K: torch.Tensor, was_numpy: bool):
    """Return ``K`` as a numpy array if the inputs were numpy arrays."""
    return K.numpy() if was_numpy else K


def kernel_recursion(act: Activation, ax, ay, c, *, depth, kernel, weight_var, bias_var,
                     parameterization="ntk", method="auto", tol=DEFAULT_TOL):
    """NNGP ``K^(L)`` or NTK ``Theta^(L)`` from the first layer's covariances (float64 tensors).

    ``ax``, ``ay`` are the variances ``K^(0)(x, x)``, ``K^(0)(y, y)``, broadcastable
    to the covariances ``c = K^(0)(x, y)``. ``parameterization="standard"`` gives
    the NTK of the standard parameterization divided by the width
    (``Theta^(0) = 0``, ``Theta^(l) = T(K^(l-1)) + weight_var T'(K^(l-1)) Theta^(l-1)``).
    """
    ntk = kernel == "ntk"
    theta = c if parameterization == "ntk" else torch.zeros_like(c)
    for _ in range(depth):
        T, Td = dual_pair(act, ax, ay, c, derivative=ntk, method=method, tol=tol)
        new = weight_var * T + bias_var
        if ntk:
            theta = (new if parameterization == "ntk" else T) + weight_var * Td * theta
        same = ay is ax
        ax = weight_var * variance_map(act, ax) + bias_var
        ay = ax if same else weight_var * variance_map(act, ay) + bias_var
        c = new
    return theta if ntk else c


def _input_exponent(X, Y, act: Activation, bias_var: float) -> int:
    """e such that the inputs are divided by 2**e: when the kernel is positively homogeneous."""
    if act.homogeneity is None or bias_var != 0.0:
        return 0
    big = max(X.abs().max().item(), Y.abs().max().item())
    return math.frexp(big)[1] if big > 0 else 0


def rescaled_kernel(X, Y, act: Activation, bias_var: float, compute, *, ndim: int = 2):
    """``compute(X64, Y64)`` in float64, returned as X's type and dtype, for inputs of any magnitude.

    When the kernel is positively homogeneous (``act.homogeneity`` set and no
    bias) the inputs are divided by a power of two 2**e and the kernel multiplied
    back by 2**(2e) (ReLU family) or 1 (step). ``ValueError`` naming X when the
    result does not fit the output dtype.
    """
    X, Y, was_numpy = as_tensor_pair(X, Y, ndim=ndim)
    out_dtype = X.dtype
    e = _input_exponent(X, Y, act, bias_var)
    X64 = torch.ldexp(X.to(torch.float64), torch.tensor(-e))
    Y64 = X64 if Y is X else torch.ldexp(Y.to(torch.float64), torch.tensor(-e))
    K = compute(X64, Y64)
    e *= 2 if act.homogeneity == 1 else 0
    top = K.abs().max().item() if K.numel() else 0.0
    limit = torch.finfo(out_dtype).max
    if not math.isfinite(top) or (top > 0 and math.log2(top) + e >= math.log2(limit)):
        size = f"~2^{math.log2(top) + e:.0f}" if math.isfinite(top) else "beyond float64"
        raise ValueError(
            f"X's scale overflows the kernel in {str(out_dtype).replace('torch.', '')} (largest "
            f"|entry| {max(X.abs().max().item(), Y.abs().max().item()):.3g} gives kernel values "
            f"{size}, the largest representable is {limit:.3g}): rescale X"
        )
    return return_like(torch.ldexp(K, torch.tensor(e)).to(out_dtype), was_numpy)


def check_first_layer(ax: torch.Tensor, act: Activation) -> None:
    """``ValueError`` naming X when its first-layer variances overflow float64."""
    if not torch.isfinite(ax).all():
        raise ValueError(
            f"X's first-layer variances overflow float64: the {act.name or 'given'} kernel is "
            "not scale-free (bias_std > 0 or an activation that is not positively homogeneous) "
            "and needs weight_std^2 |x|^2 / fan_in below ~1e300"
        )


def network_kernel(X, Y, act, *, depth, kernel, input_var, weight_var, bias_var,
                   parameterization="ntk", method="auto", tol=DEFAULT_TOL):
    """The kernel of :func:`neural_kernel` with first layer ``K^(0) = input_var <x, y> + bias_var``.

    ``input_var=None`` means ``weight_var / d``. Float64 inside, X's type and
    dtype out, inputs of any magnitude for homogeneous kernels (:func:`rescaled_kernel`).
    """

    def compute(X64, Y64):
        iv = weight_var / X64.shape[1] if input_var is None else input_var
        ax = iv * (X64 * X64).sum(1) + bias_var
        ay = ax if Y64 is X64 else iv * (Y64 * Y64).sum(1) + bias_var
        check_first_layer(torch.cat([ax, ay]), act)
        c = iv * (X64 @ Y64.T) + bias_var
        if Y64 is X64:  # the diagonal exactly collinear (correlation 1 is ill-conditioned)
            c.diagonal().copy_(ax)
        return kernel_recursion(act, ax[:, None], ay[None, :], c, depth=depth, kernel=kernel,
                                weight_var=weight_var, bias_var=bias_var,
                                parameterization=parameterization, method=method, tol=tol)

    return rescaled_kernel(X, Y, act, bias_var, compute)


def neural_kernel(X, Y=None, *, activation="relu", depth: int = 1, kernel: str = "ntk",
                  weight_std: float = 1.0, bias_std: float = 0.0, parameterization: str = "ntk",
                  method: str = "auto", tol: float = DEFAULT_TOL):
    """Exact infinite-width NTK or NNGP kernel of a fully connected network.

    Parameters
    ----------
    X : torch.Tensor or ndarray of shape (n, d)
    Y : torch.Tensor or ndarray of shape (m, d), optional
        Defaults to ``X``.
    activation : name in ``ACTIVATIONS``, Activation or callable, default "relu"
        Named activations (relu, leaky_relu, abs, erf, gelu, sin, cos, gaussian,
        step; ``piecewise_linear(a, b)`` for ``a z`` / ``b z`` on z > 0 / z <= 0)
        have closed-form duals; tanh and callables use their Hermite series
        (derivative by torch.autograd for the NTK).
    depth : int >= 1
        Hidden layers L.
    kernel : {"ntk", "nngp"}
    weight_std, bias_std : float >= 0
        Every layer (the readout included) computes
        ``weight_std / sqrt(fan_in) W h + bias_std b``; the first layer's input
        kernel is ``weight_std^2 <x, y> / d + bias_std^2``.
    parameterization : {"ntk", "standard"}
        "ntk" (Jacot et al.). "standard" (``W ~ N(0, weight_std^2 / fan_in)`` trained
        directly): the NNGP is the same; the NTK grows linearly with the width,
        and the kernel returned is its limit divided by the width (all hidden
        widths equal), in which only the weights of the hidden layers and the
        readout train: ``Theta^(0) = 0``, ``Theta^(l) = T(K^(l-1)) + weight_std^2 T' Theta^(l-1)``.
    method : {"auto", "closed_form", "hermite", "quadrature"}
        How each layer's duals are evaluated (:func:`~kernelsketch.features.activations.dual_pair`).
    tol : float in (0, 1e-2]
        Relative accuracy of the Hermite series / quadrature (not used by closed forms).

    Returns
    -------
    K : ndarray (float64) for numpy input, else a tensor of X's dtype; shape (n, m)
        Computed in float64. ReLU-family and step kernels without bias are
        positively homogeneous and are computed for inputs of any magnitude;
        ``ValueError`` if the result does not fit the output dtype.

    Notes
    -----
    ``ntk_relu(X) = d/2 * neural_kernel(X, weight_std=sqrt(2))`` (and likewise
    ``nngp_relu``); ``dual_activation(sigma, X, depth=L) =
    neural_kernel(sqrt(d) X, activation=sigma, depth=L, kernel="nngp")``.

    References
    ----------
    Jacot, Gabriel, Hongler, "Neural Tangent Kernel", NeurIPS 2018.
    Lee, Xiao, Schoenholz, Bahri, Novak, Sohl-Dickstein, Pennington, "Wide
    Neural Networks of Any Depth Evolve as Linear Models Under Gradient
    Descent", NeurIPS 2019.
    Han et al., "Fast Neural Kernel Embeddings for General Activations", arXiv 2209.04121.
    """
    act = check_network_params(activation, depth, kernel, weight_std, bias_std, parameterization)
    check_choice("method", method, METHODS)
    check_float("tol", tol, min=0.0, max=1e-2, min_exclusive=True)
    w2 = float(weight_std) ** 2
    return network_kernel(X, Y, act, depth=depth, kernel=kernel, input_var=None, weight_var=w2, bias_var=float(bias_std) ** 2,
                          parameterization=parameterization, method=method, tol=tol)


def dual_activation(activation, X, Y=None, *, depth: int = 1, method: str = "auto",
                    tol: float = DEFAULT_TOL):
    """Dual kernel ``E_w[sigma(<w,x>) sigma(<w,y>)]`` of an activation, w ~ N(0, I).

    With ``depth`` L > 1, the dual map applied L times to the covariance
    ``[[|x|^2, <x,y>], [<x,y>, |y|^2]]``: the NNGP of a bias-free network with
    L hidden sigma-layers and unit weight variance, without the 1/d of the
    first layer (``neural_kernel(sqrt(d) X, activation=sigma, depth=L, kernel="nngp")``).

    Parameters
    ----------
    activation : name in ``ACTIVATIONS``, Activation or elementwise callable
    X : torch.Tensor or ndarray of shape (n, d)
    Y : torch.Tensor or ndarray of shape (m, d), optional
        Defaults to ``X``. Inputs need not be unit-norm.
    depth : int >= 1
    method : {"auto", "closed_form", "hermite", "quadrature"}
        "auto": the closed form for named activations, else the Hermite series
        with quadrature where its tail bound fails. "quadrature": adaptive 2-D
        composite Gauss-Legendre quadrature, graded toward the activation's
        features (within ``tol`` of the closed forms for erf, gelu, gaussian at
        any input norm); ``ValueError`` where it cannot reach ``tol``.
    tol : float in (0, 1e-2]

    Returns
    -------
    K : same type as X, shape (n, m)

    References
    ----------
    Daniely, Frostig, Singer, "Toward deeper understanding of neural networks", NeurIPS 2016.
    Han et al., "Fast Neural Kernel Embeddings for General Activations", arXiv 2209.04121.
    """
    act = check_network_params(activation, depth, "nngp", 1.0, 0.0, "ntk")
    check_choice("method", method, METHODS)
    check_float("tol", tol, min=0.0, max=1e-2, min_exclusive=True)
    return network_kernel(X, Y, act, depth=depth, kernel="nngp", input_var=1.0, weight_var=1.0,
                          bias_var=0.0, method=method, tol=tol)


def empirical_kernel(X, Y=None, *, activation="relu", depth: int = 1, width: int = 1024,
                     kernel: str = "ntk", weight_std: float = 1.0, bias_std: float = 0.0,
                     parameterization: str = "ntk", generator=None) -> torch.Tensor:
    """The finite-width kernel of one randomly initialised network (the Monte Carlo of :func:`neural_kernel`).

    Draws a network with ``depth`` hidden layers of ``width`` units (standard
    normal ``W``, ``b`` from ``generator``), runs it forward and backward with
    torch.autograd, and returns for X [n, d], Y [m, d] (float64, [n, m]):

    - ``kernel="nngp"``: the readout's covariance given the hidden layers,
      ``weight_std^2 <sigma(z_L(x)), sigma(z_L(y))> / width + bias_std^2``;
    - ``kernel="ntk"``: ``sum_theta df(x)/dtheta df(y)/dtheta`` over all weights and
      biases, by the chain rule ``sum_l <delta_l(x), delta_l(y)> (weight_std^2
      <h_{l-1}(x), h_{l-1}(y)> / n_{l-1} + bias_std^2)`` with the backpropagated
      ``delta_l = df/dz_l``; for "standard", the same sum over the parameters
      ``W_std = weight_std W / sqrt(n_{l-1})`` and ``b_std = bias_std b``,
      ``sum_l <delta_l(x), delta_l(y)> (<h_{l-1}(x), h_{l-1}(y)> + 1)``, divided by the width.

    Both converge to :func:`neural_kernel` as ``width`` grows: mean error
    O(1/width), fluctuations O(1/sqrt(width)) (Jacot et al. 2018; Lee et al. 2019).
    The weights are drawn in float32 (any normal sample will do) and used in float64.
    """
    act = check_network_params(activation, depth, kernel, weight_std, bias_std, parameterization)
    check_int("width", width, min=1)
    X, Y, _ = as_tensor_pair(X, Y)
    inputs = X if Y is X else torch.cat([X, Y.to(X.dtype)])
    nngp, ntk, standard = _network_kernels(inputs.to(torch.float64), act, depth, width,
                                           float(weight_std), float(bias_std), generator,
                                           need_ntk=kernel == "ntk")
    K = {"nngp": nngp, "ntk": ntk if parameterization == "ntk" else standard}[kernel]
    return K[: X.shape[0], : X.shape[0]] if Y is X else K[: X.shape[0], X.shape[0] :]


def _network_kernels(inputs, act, depth, width, w_std, b_std, generator, need_ntk=True):
    """(NNGP, NTK, standard NTK / width) [N, N] of one random network on inputs [N, d]."""
    dims = [inputs.shape[1]] + [width] * depth + [1]
    hidden, pre = [inputs], []
    with torch.enable_grad():
        h = inputs
        for layer in range(depth + 1):
            W = torch.randn(dims[layer + 1], dims[layer], generator=generator).double()
            b = torch.randn(dims[layer + 1], generator=generator).double()
            z = (w_std / math.sqrt(dims[layer])) * h @ W.T + b_std * b
            z.requires_grad_(True)
            pre.append(z)
            if layer < depth:
                h = act(z)
                hidden.append(h)
        nngp = w_std**2 * (hidden[-1].detach() @ hidden[-1].detach().T) / width + b_std**2
        if not need_ntk:
            return nngp, None, None
        # A non-differentiable activation (step) cuts the graph: its gradients are zero.
        deltas = torch.autograd.grad(pre[-1].sum(), pre, allow_unused=True,
                                     materialize_grads=True)
    ntk = torch.zeros_like(nngp)
    standard = torch.zeros_like(nngp)
    for layer, delta in enumerate(deltas):
        h = hidden[layer].detach()
        gram, back = h @ h.T, delta @ delta.T
        ntk += back * (w_std**2 * gram / dims[layer] + b_std**2)
        standard += back * (gram + 1.0) / width
    return nngp, ntk, standard
