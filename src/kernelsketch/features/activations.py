"""Dual activations (exact and Gauss-Hermite) and Hermite coefficients of activations.

The dual kernel of an activation sigma on inputs x, y in R^d is

    k_sigma(x, y) = E_{w ~ N(0, I_d)} [ sigma(<w, x>) sigma(<w, y>) ]
                  = E[ sigma(u) sigma(v) ],  (u, v) ~ N(0, [[a, c], [c, b]]),

with a = |x|^2, b = |y|^2, c = <x, y> (Daniely, Frostig, Singer 2016).
Writing sigma(r g) = sum_i a_i(r) He_i(g) with probabilists' Hermite
polynomials He_i and a_i(r) = E[sigma(r g) He_i(g)] / i! gives the expansion
used by the sketches (Han et al., arXiv 2209.04121, Sec. 3):

    k_sigma(x, y) = sum_i i! a_i(|x|) a_i(|y|) cos(x, y)^i.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from kernelsketch._checks import check_choice, check_int, check_tensor
from kernelsketch.features._arccos import as_tensor_pair, return_like

__all__ = [
    "ACTIVATIONS",
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
    return (2 / math.pi) * torch.arcsin((2 * c / torch.sqrt((1 + 2 * a) * (1 + 2 * b))).clamp(-1, 1))


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


def dual_activation(activation, X, Y=None, *, method: str = "auto", n_nodes: int = 64):
    """Dual kernel ``E_w[sigma(<w,x>) sigma(<w,y>)]`` of an activation, w ~ N(0, I).

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
    check_choice("method", method, ("auto", "closed_form", "quadrature"))
    check_int("n_nodes", n_nodes, min=2, max=200)
    if method == "closed_form" and name is None:
        raise ValueError(
            f"method='closed_form' needs a named activation in {tuple(_DUALS)}, got a callable"
        )
    X, Y, was_numpy = as_tensor_pair(X, Y)
    a = (X * X).sum(1)[:, None]
    b = (Y * Y).sum(1)[None, :]
    c = X @ Y.T
    if name is not None and method != "quadrature":
        return return_like(_DUALS[name](a, b, c), was_numpy)
    # u = sqrt(a) g1, v = sqrt(b) (rho g1 + sqrt(1 - rho^2) g2).
    x, w = _gauss_hermite(n_nodes, X.dtype)
    s = torch.sqrt(a * b)
    rho = torch.where(s > 0, c / torch.where(s > 0, s, 1.0), 0.0).clamp(-1.0, 1.0)
    fu = (_apply(fn, a.sqrt()[..., None] * x) * w)[..., None]  # [n, 1, q(g1), 1]
    coef1 = (b.sqrt() * rho)[..., None, None] * x[:, None]  # [n, m, q, 1]
    coef2 = (b.sqrt() * torch.sqrt(1 - rho * rho))[..., None, None]
    K = torch.zeros(c.shape, dtype=X.dtype)
    chunk = max(1, 2**22 // max(1, c.numel() * n_nodes))  # g2 nodes per step: bounded memory
    for j in range(0, n_nodes, chunk):
        v = coef1 + coef2 * x[j : j + chunk]  # [n, m, q, chunk]
        K += (_apply(fn, v) * fu * w[j : j + chunk]).sum((-2, -1))
    return return_like(K, was_numpy)


def hermite_coefficients(activation, degree: int, *, radius=1.0, n_nodes: int = 200):
    """Normalised Hermite coefficients ``b_i(r) = sqrt(i!) a_i(r)`` of ``z -> sigma(r z)``.

    ``a_i(r) = E[sigma(r g) He_i(g)] / i!`` (g ~ N(0, 1)), computed by Gauss-Legendre
    quadrature with ``n_nodes`` nodes on each of [-T, 0] and [0, T] (T = 12 + 2 sqrt(degree),
    beyond which the Gaussian tail is below float64 precision). The dual kernel
    of inputs of norms r, s is ``sum_i b_i(r) b_i(s) t^i`` (t their cosine).

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
    x, w = _split_normal_quadrature(n_nodes, 12.0 + 2.0 * math.sqrt(degree))
    f = _apply(fn, r[:, None] * x) * w  # [n, q]
    # Orthonormal Hermite functions h_i = He_i / sqrt(i!) by the three-term recurrence.
    h_prev, h = torch.zeros_like(x), torch.ones_like(x)
    out = [f @ h]
    for i in range(degree):
        h_prev, h = h, (x * h - math.sqrt(i) * h_prev) / math.sqrt(i + 1)
        out.append(f @ h)
    b = torch.stack(out, dim=-1)
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
