"""Dual activations (exact and by quadrature), Hermite coefficients, and their sketch.

The dual kernel of an activation sigma is
``k_sigma(x, y) = E_{w ~ N(0, I_d)}[sigma(<w, x>) sigma(<w, y>)]`` (Daniely,
Frostig, Singer 2016); with the Hermite coefficients
``a_i(r) = E[sigma(r g) He_i(g)] / i!`` it expands as
``sum_i i! a_i(|x|) a_i(|y|) cos(x, y)^i`` (arXiv 2209.04121, Sec. 3, Eq. (4)).
:func:`dual_activation` evaluates it (closed forms for the names in
:data:`ACTIVATIONS`, quadrature for any callable) for X [n, d], Y [m, d];
:class:`ActivationKernelSketch` sketches the truncated expansion, off the sphere.

Theory (closed forms, quadrature rules, the sketch): docs/neural_kernels.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from kernelsketch._checks import check_choice, check_int, check_tensor
from kernelsketch.features._arccos import as_tensor_pair, return_like
from kernelsketch.features._base import RandomFeaturesTransformer
from kernelsketch.features._powerseries import PowerSeriesSketch, unit_rows
from kernelsketch.sketch.sampling import resolve_generator

__all__ = [
    "ACTIVATIONS",
    "ActivationKernelSketch",
    "ActivationSketchMap",
    "dual_activation",
    "hermite_coefficients",
    "relu_hermite_coefficients",
]


def _gelu(z):
    return z * 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


#: Activations with an exact dual kernel, by name (elementwise torch functions).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "gelu": _gelu,
    "erf": torch.erf,
    "sin": torch.sin,
    "cos": torch.cos,
    "gaussian": lambda z: torch.exp(-0.5 * z * z),
    "abs": torch.abs,
}


# Closed forms of E[sigma(u) sigma(v)] for (u, v) ~ N(0, [[a, c], [c, b]]).
def _dual_relu(a, b, c):
    s = torch.sqrt(a * b)
    rho = torch.where(s > 0, c / torch.where(s > 0, s, 1.0), 0.0).clamp(-1.0, 1.0)
    return s * (torch.sqrt(1 - rho * rho) + (math.pi - torch.arccos(rho)) * rho) / (2 * math.pi)


def _dual_abs(a, b, c):
    s = torch.sqrt(a * b)
    rho = torch.where(s > 0, c / torch.where(s > 0, s, 1.0), 0.0).clamp(-1.0, 1.0)
    return 2 * s * (torch.sqrt(1 - rho * rho) + rho * torch.arcsin(rho)) / math.pi


def _dual_erf(a, b, c):
    # Williams (1997), "Computing with infinite networks".
    return (2 / math.pi) * torch.arcsin(
        (2 * c / torch.sqrt((1 + 2 * a) * (1 + 2 * b))).clamp(-1, 1)
    )


def _dual_sin(a, b, c):
    return torch.exp(-(a + b) / 2) * torch.sinh(c)


def _dual_cos(a, b, c):
    return torch.exp(-(a + b) / 2) * torch.cosh(c)


def _dual_gaussian(a, b, c):
    return 1 / torch.sqrt((1 + a) * (1 + b) - c * c)


def _dual_gelu(a, b, c):
    # GeLU(z) = z Phi(z) = z P(g <= z). With p = u - g1, q = v - g2 (g1, g2 iid N(0,1)),
    # E[u v 1{p>0} 1{q>0}] follows from Gaussian integration by parts (Stein's lemma):
    # c P(p>0, q>0) + Cov(u,p) E[v delta(p) 1{q>0}] + Cov(u,q) E[v 1{p>0} delta(q)].
    d2 = (1 + a) * (1 + b) - c * c
    orthant = 0.25 + torch.arcsin((c / torch.sqrt((1 + a) * (1 + b))).clamp(-1, 1)) / (2 * math.pi)
    cross = (a * b * (1 + a) * (1 + b) + c * c * (1 - a * b)) / (
        2 * math.pi * (1 + a) * (1 + b) * torch.sqrt(d2)
    )
    return c * orthant + cross


_DUALS = {
    "relu": _dual_relu,
    "gelu": _dual_gelu,
    "erf": _dual_erf,
    "sin": _dual_sin,
    "cos": _dual_cos,
    "gaussian": _dual_gaussian,
    "abs": _dual_abs,
}


def _resolve(activation) -> tuple[str | None, Callable]:
    if isinstance(activation, str):
        check_choice("activation", activation, tuple(ACTIVATIONS))
        return activation, ACTIVATIONS[activation]
    if not callable(activation):
        raise TypeError(
            f"activation must be one of {tuple(ACTIVATIONS)} or a callable, "
            f"got {type(activation).__name__}"
        )
    return None, activation


def _apply(fn: Callable, z: torch.Tensor) -> torch.Tensor:
    out = torch.as_tensor(fn(z), dtype=z.dtype)
    if out.shape != z.shape:
        raise ValueError(
            f"activation must act elementwise (output shape {list(z.shape)}), "
            f"got output shape {list(out.shape)}"
        )
    return out


def _gauss_hermite(n_nodes: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights with sum_k w_k f(x_k) ~= E[f(g)], g ~ N(0, 1)."""
    x, w = np.polynomial.hermite_e.hermegauss(n_nodes)
    return torch.from_numpy(x).to(dtype), torch.from_numpy(w / math.sqrt(2 * math.pi)).to(dtype)


def _split_normal_quadrature(n_nodes: int, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre on [-cutoff, 0] and [0, cutoff] against the N(0, 1) density.

    Splitting at 0 makes the rule converge fast for activations with a kink at
    0 (ReLU, abs, step), where Gauss-Hermite converges only algebraically.
    """
    t, w = np.polynomial.legendre.leggauss(n_nodes)
    x = np.concatenate([(t - 1) * cutoff / 2, (t + 1) * cutoff / 2])
    w = np.concatenate([w, w]) * cutoff / 2 * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    return torch.from_numpy(x), torch.from_numpy(w)


def dual_activation(
    activation, X, Y=None, *, depth: int = 1, method: str = "auto", n_nodes: int = 64
):
    """Dual kernel ``E_w[sigma(<w,x>) sigma(<w,y>)]`` of an activation, w ~ N(0, I).

    With ``depth`` L > 1, the NNGP kernel of a fully-connected network with L
    hidden sigma-layers (no biases): the dual map applied L times to the
    covariance [[|x|^2, <x,y>], [<x,y>, |y|^2]].

    Parameters
    ----------
    activation : {"relu", "gelu", "erf", "sin", "cos", "gaussian", "abs"} or callable
        A name with a closed-form dual, or an elementwise function of a torch
        tensor (returning a tensor of the same shape).
    X : torch.Tensor or ndarray of shape (n, d)
    Y : torch.Tensor or ndarray of shape (m, d), optional
        Defaults to ``X``. Inputs need not be unit-norm.
    method : {"auto", "closed_form", "quadrature"}
        "auto" uses the closed form when ``activation`` is a name, else
        quadrature: two-dimensional Gauss-Hermite quadrature with ``n_nodes``
        nodes per dimension (exact for polynomials of degree < 2 n_nodes;
        converges slowly for non-smooth activations such as ReLU).
    depth : int >= 1
        Number of hidden layers (compositions of the dual map).
    n_nodes : int in [2, 200]
        Quadrature nodes per dimension.

    Returns
    -------
    K : same type as X, shape (n, m)

    References
    ----------
    Daniely, Frostig, Singer, "Toward deeper understanding of neural networks", NeurIPS 2016.
    Han et al., "Fast Neural Kernel Embeddings for General Activations", arXiv 2209.04121.
    """
    name, fn = _resolve(activation)
    check_int("depth", depth, min=1)
    check_choice("method", method, ("auto", "closed_form", "quadrature"))
    check_int("n_nodes", n_nodes, min=2, max=200)
    if method == "closed_form" and name is None:
        raise ValueError(
            f"method='closed_form' needs a named activation in {tuple(_DUALS)}, got a callable"
        )
    X, Y, was_numpy = as_tensor_pair(X, Y)
    if name is not None and method != "quadrature":
        dual = _DUALS[name]
    else:
        nodes = _gauss_hermite(n_nodes, X.dtype)

        def dual(a, b, c):
            return _quadrature_dual(fn, a, b, c, nodes)

    a = (X * X).sum(1)[:, None]
    b = (Y * Y).sum(1)[None, :]
    c = X @ Y.T
    for _ in range(depth):
        a, b, c = dual(a, a, a), dual(b, b, b), dual(a, b, c)
    return return_like(c, was_numpy)


def _quadrature_dual(fn, a, b, c, nodes):
    """E[fn(u) fn(v)], (u, v) ~ N(0, [[a, c], [c, b]]), by 2-D Gauss-Hermite quadrature."""
    x, w = nodes
    q = x.numel()
    # u = sqrt(a) g1, v = sqrt(b) (rho g1 + sqrt(1 - rho^2) g2).
    a, b = torch.broadcast_to(a, c.shape), torch.broadcast_to(b, c.shape)
    s = torch.sqrt(a * b)
    rho = torch.where(s > 0, c / torch.where(s > 0, s, 1.0), 0.0).clamp(-1.0, 1.0)
    fu = (_apply(fn, a.sqrt()[..., None] * x) * w)[..., None]  # [n, m, q(g1), 1]
    coef1 = (b.sqrt() * rho)[..., None, None] * x[:, None]  # [n, m, q, 1]
    coef2 = (b.sqrt() * torch.sqrt(1 - rho * rho))[..., None, None]
    K = torch.zeros(c.shape, dtype=c.dtype)
    chunk = max(1, 2**22 // max(1, c.numel() * q))  # g2 nodes per step: bounded memory
    for j in range(0, q, chunk):
        v = coef1 + coef2 * x[j : j + chunk]  # [n, m, q, chunk]
        K += (_apply(fn, v) * fu * w[j : j + chunk]).sum((-2, -1))
    return K


def _hermite_quadrature(degree: int, n_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes [2 n_nodes] and matrix H [2 n_nodes, degree + 1] with E[f(g) h_i(g)] ~= f(nodes) @ H.

    h_i = He_i / sqrt(i!) are the orthonormal Hermite polynomials (three-term
    recurrence); the rule is :func:`_split_normal_quadrature` with cutoff
    T = 12 + 2 sqrt(degree), beyond which the Gaussian tail is below float64
    precision even against h_degree.
    """
    x, w = _split_normal_quadrature(n_nodes, 12.0 + 2.0 * math.sqrt(degree))
    h_prev, h = torch.zeros_like(x), torch.ones_like(x)
    cols = [h]
    for i in range(degree):
        h_prev, h = h, (x * h - math.sqrt(i) * h_prev) / math.sqrt(i + 1)
        cols.append(h)
    return x, torch.stack(cols, dim=-1) * w[:, None]


def hermite_coefficients(activation, degree: int, *, radius=1.0, n_nodes: int = 200):
    """Normalised Hermite coefficients ``b_i(r) = sqrt(i!) a_i(r)`` of ``z -> sigma(r z)``.

    ``a_i(r) = E[sigma(r g) He_i(g)] / i!`` (g ~ N(0, 1)), computed by Gauss-Legendre
    quadrature with ``n_nodes`` nodes on each of [-T, 0] and [0, T] (T = 12 + 2 sqrt(degree);
    split at 0 so kinks there cost no accuracy). The dual kernel of inputs of
    norms r, s is ``sum_i b_i(r) b_i(s) t^i`` (t their cosine).

    Parameters
    ----------
    activation : name in ``ACTIVATIONS`` or elementwise callable on torch tensors
    degree : int >= 0
    radius : float or torch.Tensor of shape (n,), non-negative
    n_nodes : int in [2, 1000]

    Returns
    -------
    b : torch.Tensor (float64) of shape (degree + 1,) for a float radius, else (n, degree + 1)
        Divide ``b[..., i]`` by ``sqrt(i!)`` for the textbook ``a_i``.

    References
    ----------
    Han et al., arXiv 2209.04121, Eq. (4).
    """
    _, fn = _resolve(activation)
    check_int("degree", degree, min=0)
    check_int("n_nodes", n_nodes, min=2, max=1000)
    scalar = not isinstance(radius, torch.Tensor)
    r = torch.as_tensor(radius, dtype=torch.float64).reshape(-1)
    check_tensor("radius", r, ndim=1)
    if (r < 0).any():
        raise ValueError(f"radius must be >= 0, got min {r.min().item()}")
    x, H = _hermite_quadrature(degree, n_nodes)
    b = _apply(fn, r[:, None] * x) @ H
    return b[0] if scalar else b


def relu_hermite_coefficients(degree: int) -> torch.Tensor:
    """Closed-form Hermite coefficients ``a_i = E[relu(g) He_i(g)] / i!`` of ReLU.

    a_0 = 1/sqrt(2 pi), a_1 = 1/2, a_i = 0 for odd i >= 3 and, for even i >= 2,
    a_i = (-1)^(i/2 - 1) (i-3)!! / (sqrt(2 pi) i!)  (integration by parts of
    He_i phi = (-1)^i phi^(i); (-1)!! = 1).

    Returns
    -------
    a : torch.Tensor (float64) of shape (degree + 1,)
    """
    check_int("degree", degree, min=0)
    a = torch.zeros(degree + 1, dtype=torch.float64)
    a[0] = 1 / math.sqrt(2 * math.pi)
    if degree >= 1:
        a[1] = 0.5
    for i in range(2, degree + 1, 2):
        double_fact = math.prod(range(i - 3, 0, -2)) if i > 2 else 1
        a[i] = (-1) ** (i // 2 - 1) * double_fact / (math.sqrt(2 * math.pi) * math.factorial(i))
    return a


# ----------------------------------------------------------------------------- sketch


class ActivationSketchMap(nn.Module):
    """Torch feature map of the dual kernel of any activation, off the sphere.

    Per layer, ``phi(x) = S(concat_i b_i(|x|) PolySketch_i(x/|x|))`` with the
    normalised Hermite coefficients ``b_i(r)`` of ``z -> sigma(r z)``
    (radial factors, computed per sample by quadrature on the input's device),
    so ``E[<phi(x), phi(y)>] = sum_{i <= degree} b_i(|x|) b_i(|y|) cos^i``:
    the dual kernel truncated at ``degree`` (arXiv 2209.04121, Sec. 3-4).
    ``depth`` layers compose the map (the norms of the previous layer's
    features estimate its diagonal), sketching the NNGP kernel of a
    ``depth``-hidden-layer sigma-network. Theory: docs/neural_kernels.md.

    Parameters
    ----------
    d_in : int
    activation : callable
        Elementwise torch function.
    depth, degree, n_components, poly_dim : int
    n_nodes : int
        Quadrature nodes per half-line for the radial factors.
    seed : int, optional
    generator : torch.Generator, optional
        Source of the sketches (one of the two; neither: torch's global generator).
    """

    def __init__(
        self,
        d_in,
        *,
        activation,
        depth,
        degree,
        n_components,
        poly_dim,
        n_nodes=100,
        seed=None,
        generator=None,
    ):
        super().__init__()
        generator = resolve_generator(seed, generator)
        self.activation = activation
        nodes, H = _hermite_quadrature(degree, n_nodes)
        self.register_buffer("nodes", nodes)
        self.register_buffer("hermite", H)
        dims = [d_in] + [n_components] * depth
        self.layers = nn.ModuleList(
            PowerSeriesSketch(dims[h], degree, n_components, poly_dim=poly_dim, generator=generator)
            for h in range(depth)
        )
        self.d_out = n_components

    def radial_factors(self, r: torch.Tensor) -> torch.Tensor:
        """b_i(r) [..., degree + 1] for radii r [..., 1]."""
        z = r * self.nodes.to(r.dtype)
        return _apply(self.activation, z) @ self.hermite.to(r.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features [..., n_components] of x [..., d_in] (dtype of x)."""
        for layer in self.layers:
            u, r = unit_rows(x)
            x = layer(u, self.radial_factors(r))
        return x


class ActivationKernelSketch(RandomFeaturesTransformer):
    """Sketched dual-activation (NNGP) kernel of any activation (scikit-learn transformer).

    ``Z @ Z.T`` approximates ``dual_activation(activation, X, depth=depth)``:
    a truncated Hermite expansion with radial factors (valid off the unit
    sphere), PolySketch of all powers and a final SRHT per layer. Error: the
    Hermite truncation at ``degree`` (largest at cos = 1 for non-smooth
    activations) plus a sketching error falling like ``1/sqrt(n_components)``.

    Parameters
    ----------
    activation : {"relu", "gelu", "erf", "sin", "cos", "gaussian", "abs"} or callable, default "relu"
        A callable must act elementwise on torch tensors.
    depth : int >= 1, default 1
        Hidden layers.
    n_components : int >= 1, default 256
    degree : int >= 1, default 8
        Hermite truncation degree.
    poly_dim : int or None, default None
        Per-power PolySketch dimension before the final SRHT (``2 * n_components``
        if None: the per-power sketches' variance dominates at equal sizes).
    random_state : int, RandomState or None

    Attributes
    ----------
    feature_map_ : ActivationSketchMap
        Fitted torch map, usable on GPU batches after ``.to("cuda")``.
    n_features_in_ : int

    References
    ----------
    Han, Zandieh, Lee, Novak, Xiao, Karbasi, "Fast Neural Kernel Embeddings for
    General Activations", NeurIPS 2022 (arXiv 2209.04121).
    """

    _fit_reads_data = False  # the map depends on n_features only: fit takes Dask arrays

    def __init__(
        self,
        *,
        activation="relu",
        depth=1,
        n_components=256,
        degree=8,
        poly_dim=None,
        random_state=None,
    ):
        self.activation = activation
        self.depth = depth
        self.n_components = n_components
        self.degree = degree
        self.poly_dim = poly_dim
        self.random_state = random_state

    def _check_params(self, n_features):
        _resolve(self.activation)
        check_int("depth", self.depth, min=1)
        check_int("n_components", self.n_components, min=1)
        check_int("degree", self.degree, min=1, max=64)
        if self.poly_dim is not None:
            check_int("poly_dim", self.poly_dim, min=1)

    def _make_feature_map(self, n_features, generator, X):
        return ActivationSketchMap(
            n_features,
            activation=_resolve(self.activation)[1],
            depth=self.depth,
            degree=self.degree,
            n_components=self.n_components,
            poly_dim=self.poly_dim or 2 * self.n_components,
            generator=generator,
        )
