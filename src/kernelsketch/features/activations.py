"""Activations and their dual kernels: closed forms, Hermite series, quadrature, and their sketch.

The dual kernel of an activation sigma maps a covariance ``[[a, c], [c, b]]`` to
``T(a, b, c) = E[sigma(u) sigma(v)]``, ``(u, v) ~ N(0, [[a, c], [c, b]])``, and
the NTK needs the dual of its derivative, ``T'(a, b, c) = E[sigma'(u) sigma'(v)]``
(Daniely, Frostig, Singer 2016; Jacot et al. 2018). For inputs x, y of norms r, s
and cosine t, ``T = sum_i b_i(r) b_i(s) t^i`` with the normalised Hermite
coefficients ``b_i(r) = E[sigma(r g) He_i(g)] / sqrt(i!)`` (arXiv 2209.04121,
Sec. 3, Eq. (4)).

- :class:`Activation` (an elementwise function with its closed-form duals, if
  any), :data:`ACTIVATIONS` (relu, leaky_relu, abs, erf, gelu, sin, cos,
  gaussian, step with closed forms; tanh without), :func:`piecewise_linear`;
- :func:`dual_pair`: ``(T, T')`` on broadcastable tensors ``a, b, c`` by the closed
  forms, the Hermite series with a rigorous tail bound, or adaptive 2-D
  quadrature (composite Gauss-Legendre graded toward the activation's
  features), each to a relative tolerance ``tol`` or a ``ValueError``;
- :func:`hermite_coefficients`, :func:`relu_hermite_coefficients`;
- :class:`ActivationSketchMap`, :class:`ActivationKernelSketch`: sketches of the
  NNGP and NTK of a fully connected network of any activation, with weight and
  bias variances (Hermite series with exact radial factors, Horner chains of
  TensorSketches), converging to :func:`~kernelsketch.features.neural_kernel`.

Theory (closed forms and their derivations, quadrature, tail bound, sketch):
docs/neural_kernels.md.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kernelsketch._checks import check_choice, check_float, check_int, check_tensor
from kernelsketch.features._base import RandomFeaturesTransformer
from kernelsketch.features._horner import HornerSketch, TensorPairSketch
from kernelsketch.features._powerseries import unit_rows
from kernelsketch.sketch.projections import compute_dtype, random_signs
from kernelsketch.sketch.sampling import resolve_generator

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_TOL",
    "Activation",
    "ActivationKernelSketch",
    "ActivationSketchMap",
    "dual_pair",
    "hermite_coefficients",
    "piecewise_linear",
    "radial_coefficients",
    "relu_hermite_coefficients",
    "resolve_activation",
    "variance_map",
]

#: Default relative accuracy of the Hermite series and the quadrature.
DEFAULT_TOL = 1e-10
#: Largest number of hidden layers of the neural kernels and their sketches.
MAX_DEPTH = 10_000
METHODS = ("auto", "closed_form", "hermite", "quadrature")
_SQRT_2PI = math.sqrt(2.0 * math.pi)


# ----------------------------------------------------------------------------- activations


def _correlation(a, b, c):
    """(sqrt(a b), c / sqrt(a b) in [-1, 1]; 0 where a b = 0).

    Correlations within 8 ulps of +-1 are set to +-1: the rounding of
    ``sqrt(a) sqrt(b)`` would otherwise move collinear pairs (the diagonal) off
    1, where the duals of kinked activations have infinite slope.
    """
    s = torch.sqrt(a) * torch.sqrt(b)
    rho = torch.where(s > 0, c / torch.where(s > 0, s, 1.0), 0.0).clamp(-1.0, 1.0)
    near = rho.abs() >= 1 - 8 * torch.finfo(rho.dtype).eps
    return s, torch.where(near, torch.sign(rho), rho)


def _one_minus_rho2(rho):
    return ((1 - rho) * (1 + rho)).clamp_min(0.0)


@dataclass(frozen=True, eq=False)
class Activation:
    """An elementwise activation and what the neural kernels need of it.

    Parameters
    ----------
    fn : callable
        Elementwise function of a torch tensor (returns a tensor of the same shape).
    name : str, optional
    derivative : callable, optional
        Elementwise derivative (almost everywhere). ``None``: ``torch.autograd``.
    dual, derivative_dual : callable, optional
        Closed forms ``(a, b, c) -> E[fn(u) fn(v)]`` and ``E[fn'(u) fn'(v)]`` on
        broadcastable float64 tensors. ``None``: Hermite series / quadrature.
    homogeneity : int, optional
        ``k`` with ``fn(s z) = s^k fn(z)`` for ``s > 0`` (1: ReLU family,
        0: step), used to rescale inputs of any magnitude.
    key : hashable, optional
        Identifies the activation in caches (named activations only).

    Calling an ``Activation`` applies ``fn``.
    """

    fn: Callable[[torch.Tensor], torch.Tensor]
    name: str | None = None
    derivative: Callable[[torch.Tensor], torch.Tensor] | None = None
    dual: Callable | None = None
    derivative_dual: Callable | None = None
    homogeneity: int | None = None
    key: Hashable = None

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.fn(z)

    def grad(self, z: torch.Tensor) -> torch.Tensor:
        """The derivative at z (``derivative`` if given, else by ``torch.autograd``)."""
        if self.derivative is not None:
            return self.derivative(z)
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            out = self.fn(z)
            if not isinstance(out, torch.Tensor) or not out.requires_grad:
                raise TypeError(
                    f"activation {self.name or self.fn!r} must be differentiable by torch.autograd "
                    "for kernel='ntk' (its output does not depend on its input through torch "
                    "operations); pass Activation(fn, derivative=...)"
                )
            (g,) = torch.autograd.grad(out.sum(), z)
        return g.detach()

    def __repr__(self) -> str:
        return f"Activation({self.name or getattr(self.fn, '__name__', repr(self.fn))})"


class _PiecewiseLinear:
    """``p z`` for z > 0, ``q z`` otherwise, and its closed forms (a picklable callable)."""

    def __init__(self, p: float, q: float):
        self.p, self.q = p, q
        self.alpha2, self.beta2 = ((p + q) / 2) ** 2, ((p - q) / 2) ** 2

    def fn(self, z):
        return torch.where(z > 0, self.p * z, self.q * z)

    def derivative(self, z):
        return torch.where(z > 0, self.p, self.q).to(z.dtype)

    def dual(self, a, b, c):
        s, rho = _correlation(a, b, c)
        return self.alpha2 * c + self.beta2 * (2 / math.pi) * s * (
            torch.sqrt(_one_minus_rho2(rho)) + rho * torch.arcsin(rho)
        )

    def derivative_dual(self, a, b, c):
        _, rho = _correlation(a, b, c)
        return self.alpha2 + self.beta2 * (2 / math.pi) * torch.arcsin(rho)


def piecewise_linear(positive_slope: float = 1.0, negative_slope: float = 0.0) -> Activation:
    """``z -> positive_slope * z`` for z > 0, ``negative_slope * z`` otherwise (ReLU: (1, 0)).

    With ``alpha = (p + q)/2``, ``beta = (p - q)/2`` it is ``alpha z + beta |z|``, so
    ``T = alpha^2 c + beta^2 (2 s / pi)(sqrt(1 - rho^2) + rho arcsin rho)`` and
    ``T' = alpha^2 + beta^2 (2/pi) arcsin rho`` (``s = sqrt(a b)``, ``rho = c / s``).
    """
    p = check_float("positive_slope", positive_slope)
    q = check_float("negative_slope", negative_slope)
    pl = _PiecewiseLinear(p, q)
    return Activation(pl.fn, f"piecewise_linear({p:g}, {q:g})", pl.derivative, pl.dual,
                      pl.derivative_dual, 1, ("piecewise_linear", p, q))


def _erf_dual(a, b, c):
    # Williams (1997), "Computing with infinite networks".
    rho = 2 * c / (torch.sqrt(1 + 2 * a) * torch.sqrt(1 + 2 * b))
    return (2 / math.pi) * torch.arcsin(rho.clamp(-1, 1))


def _erf_derivative_dual(a, b, c):
    # erf' = (2/sqrt(pi)) exp(-z^2): (4/pi) E[exp(-u^2 - v^2)] = (4/pi) det(I + 2 Sigma)^(-1/2).
    return (4 / math.pi) / _root_det(2 * a, 2 * b, 2 * c)


def _root_det(a, b, c):
    """sqrt(det(I + Sigma)) = sqrt(1 + a + b + (a b - c^2)), without cancellation or overflow.

    ``a b - c^2 = (sqrt(a b) sqrt(1 - rho^2))^2``; the root is the norm of
    ``(1, sqrt(a), sqrt(b), sqrt(a b (1 - rho^2)))``.
    """
    s, rho = _correlation(a, b, c)
    parts = torch.stack(torch.broadcast_tensors(torch.ones_like(s), torch.sqrt(a), torch.sqrt(b),
                                                s * torch.sqrt(_one_minus_rho2(rho))))
    top = parts.amax(0)
    return top * torch.linalg.vector_norm(parts / top, dim=0)


def _gaussian_dual(a, b, c):
    return 1 / _root_det(a, b, c)


def _gaussian_derivative_dual(a, b, c):
    # E[u v exp(-(u^2 + v^2)/2)] = det(I + Sigma)^(-1/2) [Sigma (I + Sigma)^(-1)]_12 = c / D^(3/2).
    root = _root_det(a, b, c)
    return c / root / root / root


def _gelu_orthant(a, b, c):
    # P(p > 0, q > 0) for p = u - g1, q = v - g2: Var p = 1 + a, Var q = 1 + b, Cov = c.
    rho = c / (torch.sqrt(1 + a) * torch.sqrt(1 + b))
    return 0.25 + torch.arcsin(rho.clamp(-1, 1)) / (2 * math.pi), rho


def _gelu_dual(a, b, c):
    # E[u v 1{p>0} 1{q>0}] by Gaussian integration by parts (Stein's lemma); the cross
    # terms (a b (1+a)(1+b) + c^2 (1 - a b)) / (2 pi (1+a)(1+b) sqrt(D)) simplify to
    # (a b D + c^2) / (2 pi (1+a)(1+b) sqrt(D)), D = (1+a)(1+b) - c^2.
    orthant, rho = _gelu_orthant(a, b, c)
    root = _root_det(a, b, c)
    ratio = (a / (1 + a)) * (b / (1 + b))
    return c * orthant + (ratio * root + rho * rho / root) / (2 * math.pi)


def _gelu_derivative_dual(a, b, c):
    # gelu' = Phi + z phi: E[Phi Phi] + E[Phi(u) v phi(v)] + E[u phi(u) Phi(v)] + E[u v phi phi]
    # = orthant + c / (2 pi sqrt(D)) (1/(1+a) + 1/(1+b)) + c / (2 pi D^(3/2)).
    orthant, _ = _gelu_orthant(a, b, c)
    root = _root_det(a, b, c)
    return orthant + c / (2 * math.pi * root) * (1 / (1 + a) + 1 / (1 + b) + 1 / root / root)


def _exp_combination(a, b, c, sign):
    # exp(-(a+b)/2) (exp(c) + sign exp(-c)) / 2 without overflow (|c| <= (a + b)/2).
    half = (a + b) / 2
    return (torch.exp(c - half) + sign * torch.exp(-c - half)) / 2


def _sin_dual(a, b, c):
    return _exp_combination(a, b, c, -1.0)  # exp(-(a+b)/2) sinh(c)


def _cos_dual(a, b, c):
    return _exp_combination(a, b, c, 1.0)  # exp(-(a+b)/2) cosh(c)


def _step_dual(a, b, c):
    s, rho = _correlation(a, b, c)
    return torch.where(s > 0, 0.25 + torch.arcsin(rho) / (2 * math.pi), 0.0)


def _zero_dual(a, b, c):
    return torch.zeros_like(c + a + b)


def _gelu(z):
    return z * 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


def _gelu_derivative(z):
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0))) + z * torch.exp(-0.5 * z * z) / _SQRT_2PI


def _erf_derivative(z):
    return 2 / math.sqrt(math.pi) * torch.exp(-z * z)


def _minus_sin(z):
    return -torch.sin(z)


def _gaussian(z):
    return torch.exp(-0.5 * z * z)


def _gaussian_derivative(z):
    return -z * torch.exp(-0.5 * z * z)


def _step(z):
    return (z > 0).to(z.dtype)


def _tanh_derivative(z):
    return 1 - torch.tanh(z) ** 2


def _named(name, fn, derivative, dual=None, derivative_dual=None, homogeneity=None):
    return Activation(fn, name, derivative, dual, derivative_dual, homogeneity, name)


def _piecewise(name, fn, p, q):
    pl = _PiecewiseLinear(p, q)
    return _named(name, fn, pl.derivative, pl.dual, pl.derivative_dual, 1)


#: Named activations. Closed-form duals and derivative duals for all but tanh
#: (Hermite series / quadrature); ``leaky_relu`` has negative slope 0.01.
ACTIVATIONS: dict[str, Activation] = {
    "relu": _piecewise("relu", torch.relu, 1.0, 0.0),
    "leaky_relu": _piecewise("leaky_relu", _PiecewiseLinear(1.0, 0.01).fn, 1.0, 0.01),
    "abs": _piecewise("abs", torch.abs, 1.0, -1.0),
    "erf": _named("erf", torch.erf, _erf_derivative, _erf_dual, _erf_derivative_dual),
    "gelu": _named("gelu", _gelu, _gelu_derivative, _gelu_dual, _gelu_derivative_dual),
    "sin": _named("sin", torch.sin, torch.cos, _sin_dual, _cos_dual),
    "cos": _named("cos", torch.cos, _minus_sin, _cos_dual, _sin_dual),
    "gaussian": _named("gaussian", _gaussian, _gaussian_derivative, _gaussian_dual,
                       _gaussian_derivative_dual),
    # The step's derivative is 0 almost everywhere, as torch.autograd sees it.
    "step": _named("step", _step, torch.zeros_like, _step_dual, _zero_dual, 0),
    "tanh": _named("tanh", torch.tanh, _tanh_derivative),
}


def resolve_activation(activation) -> Activation:
    """A name in :data:`ACTIVATIONS`, an :class:`Activation` or an elementwise callable."""
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        check_choice("activation", activation, tuple(ACTIVATIONS))
        return ACTIVATIONS[activation]
    if not callable(activation):
        raise TypeError(
            f"activation must be one of {tuple(ACTIVATIONS)}, an Activation or a callable, "
            f"got {type(activation).__name__}"
        )
    return Activation(activation)


def _apply(fn: Callable, z: torch.Tensor, what: str = "activation") -> torch.Tensor:
    out = fn(z)
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(out, dtype=z.dtype)
    if out.shape != z.shape:
        raise ValueError(
            f"{what} must act elementwise (output shape {list(z.shape)}), "
            f"got output shape {list(out.shape)}"
        )
    out = out.to(z.dtype)
    if not torch.isfinite(out).all():
        bad = z[~torch.isfinite(out)]
        raise ValueError(
            f"{what} returned non-finite values at inputs of magnitude up to "
            f"{bad.abs().max().item():.3g}: its dual kernel is not defined at this "
            "pre-activation variance (rescale the inputs or weight_std)"
        )
    return out


# ----------------------------------------------------------------------------- quadrature rules

GRADING = 16  # panels graded toward 0 down to spacing * 2**-GRADING


@functools.cache
def _gauss_legendre(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    t, w = np.polynomial.legendre.leggauss(p)
    return torch.from_numpy(t), torch.from_numpy(w)


def _panel_nodes(breaks: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre nodes and (Lebesgue) weights on the panels between sorted breakpoints.

    ``breaks`` [..., B] -> nodes, weights [..., (B - 1) p]; empty panels get zero weight.
    """
    t, w = _gauss_legendre(p)
    lo, hi = breaks[..., :-1, None], breaks[..., 1:, None]
    half = (hi - lo) / 2
    return ((lo + hi) / 2 + half * t).flatten(-2), (half * w).flatten(-2)


def _graded_breaks(half_width: float, spacing: float) -> torch.Tensor:
    """Breakpoints of [-T, T]: a grid of the given spacing, refined geometrically toward 0."""
    grid = np.arange(spacing, half_width, spacing)
    graded = spacing * 2.0 ** -np.arange(1, GRADING + 1)
    pos = np.concatenate([graded[::-1], grid, [half_width]])
    return torch.from_numpy(np.concatenate([-pos[::-1], [0.0], pos]))


@functools.lru_cache(maxsize=16)
def _hermite_rule(degree: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nodes x [Q], H [Q, degree + 1] with ``E[f(g) h_i(g)] ~= f(x) @ H``, Gaussian weights [Q].

    ``h_i = He_i / sqrt(i!)``. Composite Gauss-Legendre (12 nodes per panel) on
    [-T, T], T = 12 + 2 sqrt(degree) (beyond it ``h_i phi`` is below float64
    precision), panels of width min(1/2, 4 / sqrt(degree + 1)) (a few per
    oscillation of h_degree) graded toward 0 (kinks and steep activations at 0).
    The Hermite functions ``h_i sqrt(phi)`` are recurred instead of ``h_i`` so
    that nothing overflows.
    """
    half = 12.0 + 2.0 * math.sqrt(degree)
    x, W = _panel_nodes(_graded_breaks(half, min(0.5, 4.0 / math.sqrt(degree + 1))), 12)
    root = torch.exp(-x * x / 4) / (2 * math.pi) ** 0.25  # sqrt(phi(x))
    psi = [root]
    prev = torch.zeros_like(x)
    for i in range(degree):
        psi_i = psi[-1]
        psi.append((x * psi_i - math.sqrt(i) * prev) / math.sqrt(i + 1))
        prev = psi_i
    return x, torch.stack(psi, -1) * (W * root)[:, None], W * root * root


def _radial(fn: Callable, r: torch.Tensor, degree: int, what: str = "activation", *,
            parity: bool = False):
    """(b [..., degree + 1], E[fn(r g)^2] [...]) for radii r (float64, any shape).

    With ``parity``, also ``E[fn(r g) fn(-r g)]`` (the rule is symmetric: the
    reversed nodes are the negated ones), from which the even and odd parts'
    second moments follow.
    """
    x, H, w = _hermite_rule(degree)
    x, H, w = x.to(r.device), H.to(r.device), w.to(r.device)
    flat = r.reshape(-1)
    step = max(1, 2**22 // x.numel())
    coef, sq, swap = [], [], []
    for i in range(0, flat.numel(), step):
        F = _apply(fn, flat[i : i + step, None] * x, what)
        coef.append(F @ H)
        sq.append((F * F) @ w)
        if parity:
            swap.append((F * F.flip(-1)) @ w)
    out = (torch.cat(coef).reshape(*r.shape, degree + 1), torch.cat(sq).reshape(r.shape))
    return (*out, torch.cat(swap).reshape(r.shape)) if parity else out


# ----------------------------------------------------------------------------- Hermite series

LADDER = (16, 32, 64, 128, 256)


def _hermite_dual(fn, a, b, c, tol, what):
    """Hermite series of E[fn(u) fn(v)] and where its tail bound meets ``tol``.

    The degree N is the smallest of :data:`LADDER` with every radius' tail
    ``R_N(r) = E[fn(r g)^2] - sum_{i<=N} b_i(r)^2 <= tol E[fn(r g)^2]``; then
    ``|T - T_N| <= |rho|^(N+1) sqrt(R_N(r) R_N(s))`` (Cauchy-Schwarz on the tail).
    Returns (series, ok, scale) with ``ok`` where that bound is within
    ``tol * scale``, ``scale = sqrt(E[fn(r g)^2] E[fn(s g)^2])``.
    """
    ra, rb = torch.sqrt(a), torch.sqrt(b)
    for N in LADDER:
        Ba, Da = _radial(fn, ra, N, what)
        Bb, Db = (Ba, Da) if b is a else _radial(fn, rb, N, what)
        Ra = (Da - (Ba * Ba).sum(-1)).clamp_min(0.0)
        Rb = Ra if b is a else (Db - (Bb * Bb).sum(-1)).clamp_min(0.0)
        if bool((Ra <= tol * Da).all()) and bool((Rb <= tol * Db).all()):
            break
    _, rho = _correlation(a, b, c)
    series = torch.zeros_like(rho)
    for i in range(N, -1, -1):
        series = series * rho + Ba[..., i] * Bb[..., i]
    scale = torch.sqrt(Da * Db)
    bound = rho.abs() ** (N + 1) * torch.sqrt(Ra * Rb)
    return series, bound <= tol * scale + 1e-300, scale


# ----------------------------------------------------------------------------- 2-D quadrature

OUTER_HALF = 10.0  # |g| <= 10: the Gaussian tail beyond is below 1e-22
QUADRATURE_LEVELS = (6, 10, 16, 24)  # Gauss-Legendre nodes per panel, refined until two agree
MAX_QUADRATURE_ENTRIES = 20_000
# Panels for the Gaussian factor (finer where it carries the mass).
_GAUSS_BREAKS = (1.0, 2.0, 3.0, 4.0, 5.5, 7.0, 8.5, OUTER_HALF)


def _symmetric(points) -> torch.Tensor:
    pos = torch.as_tensor(sorted(set(points)), dtype=torch.float64)
    return torch.cat([-pos.flip(0), torch.zeros(1, dtype=torch.float64), pos])


def _grading(scale: float) -> int:
    """Geometric levels resolving features of width 1/scale (at most GRADING)."""
    return int(min(GRADING, max(2, math.ceil(math.log2(max(scale, 1.0) * 8)) + 2)))


@functools.lru_cache(maxsize=64)
def _outer_rule(levels: int, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """E[f(g)] rule on [-10, 10]: Gaussian panels plus panels graded toward 0 down to 2**-levels."""
    breaks = _symmetric(_GAUSS_BREAKS + tuple(2.0 ** -k for k in range(1, levels + 1)))
    x, W = _panel_nodes(breaks, p)
    return x, W * torch.exp(-x * x / 2) / _SQRT_2PI


def _quadrature_pass(fn, a, b, c, p, what):
    """E[fn(u) fn(v)] for flat a, b, c [E] with p Gauss-Legendre nodes per panel.

    u = sqrt(a) g1, v = m + tau g2 with m = sqrt(b) rho g1, tau = sqrt(b (1 - rho^2)). The outer
    rule in g1 is graded toward 0, where fn(u) and E[fn(v) | g1] have their features; the inner
    rule in g2 adds, per outer node, the breakpoints g2 = (v_k - m) / tau of a feature grid v_k
    (0 and +-8 2^-k, graded to the scale of tau), so both scales are resolved at any variance.
    Entries are grouped by the grading they need.
    """
    ra, rb = torch.sqrt(a), torch.sqrt(b)
    _, rho = _correlation(a, b, c)
    tau = rb * torch.sqrt(_one_minus_rho2(rho))
    # E[fn(v) | g1] is fn(sqrt(b) rho g1) smoothed at width tau: features of width
    # max(1, tau) / (sqrt(b) |rho|) in g1 for smooth fn, tau / (sqrt(b) |rho|) at a kink.
    sharp = rb * rho.abs() / tau.clamp(min=2.0**-GRADING).clamp(max=1.0)
    outer = [_grading(v) for v in torch.maximum(ra, sharp).tolist()]
    inner = [_grading(v) for v in tau.tolist()]
    grid = _symmetric(_GAUSS_BREAKS)
    out = torch.empty_like(c)
    for lo, li in sorted(set(zip(outer, inner))):
        idx = torch.tensor([k for k, key in enumerate(zip(outer, inner)) if key == (lo, li)])
        x1, w1 = _outer_rule(lo, p)
        v_breaks = 8.0 * _symmetric(2.0**-k for k in range(li))
        step = max(1, 2**22 // (x1.numel() * (grid.numel() + v_breaks.numel() - 1) * p))
        for j in range(0, idx.numel(), step):
            s = idx[j : j + step]
            m = (rb[s] * rho[s])[:, None] * x1  # [e, Q1]
            t = tau[s][:, None, None]
            shifted = (v_breaks - m[..., None]) / torch.where(t > 0, t, 1.0)
            shifted = torch.where(t > 0, shifted, OUTER_HALF).clamp(-OUTER_HALF, OUTER_HALF)
            breaks = torch.cat([grid.expand(*m.shape, -1), shifted], -1).sort(-1).values
            x2, w2 = _panel_nodes(breaks, p)
            w2 = w2 * torch.exp(-x2 * x2 / 2) / _SQRT_2PI
            inner_mean = (_apply(fn, m[..., None] + t * x2, what) * w2).sum(-1)  # [e, Q1]
            out[s] = (_apply(fn, ra[s][:, None] * x1, what) * w1 * inner_mean).sum(-1)
    return out


def _quadrature_dual(fn, a, b, c, tol, what):
    """Adaptive 2-D quadrature of E[fn(u) fn(v)] for flat a, b, c [E] to ``tol * scale``.

    Refines the nodes per panel through :data:`QUADRATURE_LEVELS` until two
    successive results agree within ``tol`` times ``sqrt(E[fn(u)^2] E[fn(v)^2])``.
    """
    if a.numel() > MAX_QUADRATURE_ENTRIES:
        raise ValueError(
            f"{a.numel()} kernel entries need the 2-D quadrature of the {what}'s dual (its Hermite "
            f"series does not reach tol at their variances and correlations); at most "
            f"{MAX_QUADRATURE_ENTRIES} are computed that way: pass a larger tol, or an activation "
            "with a closed form"
        )
    _, Da = _radial(fn, torch.sqrt(a), 0, what)
    _, Db = _radial(fn, torch.sqrt(b), 0, what)
    scale = torch.sqrt(Da * Db)
    out = torch.empty_like(c)
    todo = torch.arange(c.numel())
    prev = None
    for p in QUADRATURE_LEVELS:
        cur = _quadrature_pass(fn, a[todo], b[todo], c[todo], p, what)
        if prev is not None:
            done = (cur - prev).abs() <= tol * scale[todo] + 1e-300
            out[todo[done]] = cur[done]
            todo, cur = todo[~done], cur[~done]
            if todo.numel() == 0:
                return out
        prev = cur
    raise ValueError(
        f"the 2-D quadrature of the {what}'s dual did not reach tol={tol:g} at "
        f"{todo.numel()} entries (pre-activation variances up to "
        f"{max(a[todo].max().item(), b[todo].max().item()):.3g}): the {what} is not smooth "
        "enough there; pass a larger tol"
    )


# ----------------------------------------------------------------------------- one layer


def _series_or_quadrature(fn, a, b, c, method, tol, what):
    if method == "quadrature":
        A, B, C = torch.broadcast_tensors(a, b, c)
        return _quadrature_dual(fn, A.reshape(-1), B.reshape(-1), C.reshape(-1), tol,
                                what).reshape(C.shape)
    K, ok, _ = _hermite_dual(fn, a, b, c, tol, what)
    if bool(ok.all()):
        return K
    A, B, C = (t.expand(K.shape) for t in torch.broadcast_tensors(a, b, c))
    _, rho = _correlation(A, B, C)
    # Collinear pairs (|rho| = 1, e.g. the diagonal): v = +-sqrt(b/a) u, a 1-D integral.
    line = ~ok & (rho.abs() == 1)
    if bool(line.any()):
        x, _, w = _hermite_rule(0)
        u = torch.sqrt(A[line])[:, None] * x
        v = (rho[line] * torch.sqrt(B[line]))[:, None] * x
        K[line] = (_apply(fn, u, what) * _apply(fn, v, what) * w).sum(-1)
    bad = ~ok & ~line
    if not bool(bad.any()):
        return K
    if method == "hermite":
        raise ValueError(
            f"the Hermite series of the {what}'s dual does not reach tol={tol:g} at "
            f"{int(bad.sum())} entries within degree {LADDER[-1]} (pre-activation variances up "
            f"to {max(A[bad].max().item(), B[bad].max().item()):.3g}, correlations up to "
            f"{rho[bad].abs().max().item():.6g}): pass method='quadrature' or 'auto', or a "
            "larger tol"
        )
    K[bad] = _quadrature_dual(fn, A[bad], B[bad], C[bad], tol, what)
    return K


def dual_pair(act: Activation, a, b, c, *, derivative: bool = False, method: str = "auto",
              tol: float = DEFAULT_TOL):
    """``(E[sigma(u) sigma(v)], E[sigma'(u) sigma'(v)] or None)``, (u, v) ~ N(0, [[a, c], [c, b]]).

    Parameters
    ----------
    act : Activation
    a, b : torch.Tensor (float64), variances broadcastable to ``c``
    c : torch.Tensor (float64), covariances
    derivative : bool
        Also return the derivative's dual (the NTK needs it).
    method : {"auto", "closed_form", "hermite", "quadrature"}
        "auto": the closed forms if ``act`` has them, else the Hermite series,
        with 2-D quadrature for the entries its tail bound does not certify.
        "hermite" raises ``ValueError`` for such entries; "quadrature" uses the
        adaptive 2-D rule everywhere.
    tol : float
        Relative accuracy of the series and the quadrature (relative to
        ``sqrt(E[sigma(u)^2] E[sigma(v)^2])``).
    """
    if method != "quadrature" and method != "hermite" and act.dual is not None:
        return act.dual(a, b, c), (act.derivative_dual(a, b, c) if derivative else None)
    if method == "closed_form":
        raise ValueError(
            f"method='closed_form' needs an activation with a closed-form dual "
            f"({tuple(k for k, v in ACTIVATIONS.items() if v.dual is not None)}), got {act!r}"
        )
    T = _series_or_quadrature(act.fn, a, b, c, method, tol, "activation")
    if not derivative:
        return T, None
    return T, _series_or_quadrature(act.grad, a, b, c, method, tol, "activation's derivative")


def variance_map(act: Activation, a: torch.Tensor, *, derivative: bool = False) -> torch.Tensor:
    """``E[sigma(sqrt(a) g)^2]`` (or of sigma') for variances a (float64, any shape)."""
    closed = act.derivative_dual if derivative else act.dual
    if closed is not None:
        return closed(a, a, a)
    fn = act.grad if derivative else act.fn
    return _radial(fn, torch.sqrt(a), 0, "activation's derivative" if derivative else "activation")[1]


# ----------------------------------------------------------------------------- Hermite coefficients


def hermite_coefficients(activation, degree: int, *, radius=1.0, derivative: bool = False):
    """Normalised Hermite coefficients ``b_i(r) = sqrt(i!) a_i(r)`` of ``z -> sigma(r z)``.

    ``a_i(r) = E[sigma(r g) He_i(g)] / i!`` (g ~ N(0, 1)), by composite Gauss-Legendre
    quadrature graded toward 0 (:func:`_hermite_rule`; accurate for kinks and
    steep activations at 0 at any radius). The dual kernel of inputs of norms
    r, s is ``sum_i b_i(r) b_i(s) t^i`` (t their cosine).

    Parameters
    ----------
    activation : name in ``ACTIVATIONS``, Activation or elementwise callable
    degree : int in [0, 512]
        (beyond, the Hermite functions' recurrence would start below float64's
        range inside their oscillating region)
    radius : float or torch.Tensor of shape (n,), non-negative, finite
    derivative : bool, default False
        Coefficients of the derivative ``z -> sigma'(r z)`` instead.

    Returns
    -------
    b : torch.Tensor (float64) of shape (degree + 1,) for a float radius, else (n, degree + 1)
        Divide ``b[..., i]`` by ``sqrt(i!)`` for the textbook ``a_i``.

    References
    ----------
    Han et al., arXiv 2209.04121, Eq. (4).
    """
    act = resolve_activation(activation)
    check_int("degree", degree, min=0, max=512)
    scalar = not isinstance(radius, torch.Tensor)
    r = torch.as_tensor(radius, dtype=torch.float64).reshape(-1)
    check_tensor("radius", r, ndim=1)
    if (r < 0).any():
        raise ValueError(f"radius must be >= 0, got min {r.min().item()}")
    b = _radial(act.grad if derivative else act.fn, r, degree)[0]
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
    a[0] = 1 / _SQRT_2PI
    if degree >= 1:
        a[1] = 0.5
    for i in range(2, degree + 1, 2):
        # (i-3)!! / i! in logs (no overflow): (2k-3)!! = (2k-2)! / (2^(k-1) (k-1)!), i = 2k.
        k = i // 2
        log = math.lgamma(2 * k - 1) - (k - 1) * math.log(2) - math.lgamma(k) - math.lgamma(i + 1)
        a[i] = (-1) ** (k - 1) * math.exp(log) / _SQRT_2PI
    return a


# ----------------------------------------------------------------------------- sketch


def _folded(B: torch.Tensor, D: torch.Tensor, swap: torch.Tensor) -> torch.Tensor:
    """Fold the series' tail into its top even and top odd coefficients (exact at rho = +-1).

    The tail of each parity, ``E[sigma_even(r g)^2] - sum_{even i} b_i^2`` with
    ``E[sigma_even^2] = (D + swap) / 2`` (and ``(D - swap) / 2`` for the odd
    part), joins the highest coefficient of that parity, keeping its sign: the
    truncated series then equals the dual at correlations 1 and -1, and an odd
    (even) activation keeps its zero even (odd) coefficients.
    """
    B = B.clone()
    degree = B.shape[-1] - 1
    for parity, moment in ((0, (D + swap) / 2), (1, (D - swap) / 2)):
        top = degree - ((degree - parity) % 2)
        if top < 0:
            continue
        tail = (moment - (B[..., parity::2] ** 2).sum(-1)).clamp_min(0.0)
        b = B[..., top]
        B[..., top] = torch.where(b < 0, -1.0, 1.0).to(B.dtype) * torch.sqrt(b * b + tail)
    return B


def radial_coefficients(act: Activation, r: torch.Tensor, degree: int, *,
                        derivative: bool = False) -> torch.Tensor:
    """Hermite coefficients [..., degree + 1] of ``z -> sigma(r z)`` (or sigma'), tail folded.

    For radii r (float64, any shape). The tail ``E[sigma(r g)^2] - sum_i b_i(r)^2``
    is folded into the top coefficient, so that the truncated series is exact
    at correlation 1 (the diagonal). Positively homogeneous activations are
    expanded once (``b(r) = r^k b(1)``).
    """
    fn = act.grad if derivative else act.fn
    what = "activation's derivative" if derivative else "activation"
    k = None if act.homogeneity is None else act.homogeneity - derivative
    if k is not None and k >= 0:
        one = torch.ones(1, dtype=torch.float64, device=r.device)
        return _folded(*_radial(fn, one, degree, what, parity=True))[0] * (r**k)[..., None]
    return _folded(*_radial(fn, r, degree, what, parity=True))


class ActivationSketchMap(nn.Module):
    """Torch feature map of the NNGP / NTK of a fully connected network of any activation.

    Layer l maps the features ``psi`` of the pre-activation covariance
    ``K^(l-1)`` (``psi_0 = [sqrt(input_var) x, bias_std]``) to those of
    ``K^(l) = weight_var T(K^(l-1)) + bias_var``:
    ``psi_l = weight_std H_l(u; b(r)) + bias_std xi_l / sqrt(m)`` with
    ``u = psi / |psi|``, ``r`` the exact pre-activation std of the sample (the
    diagonal recursion ``K^(l)(x, x) = weight_var E[sigma(r g)^2] + bias_var``,
    by quadrature), ``b(r)`` the Hermite coefficients of ``z -> sigma(r z)``
    truncated at ``degree`` with the tail folded into the top one (so the
    diagonal is exact in expectation), and ``H_l`` a :class:`HornerSketch`
    (arXiv 2209.04121, Sec. 4, with a Horner chain instead of PolySketch).
    The NTK features are ``theta_l = weight_std S_l(theta_{l-1} ⊗ H'_l(u; b'(r))) + psi_l``
    (for ``parameterization="standard"``, ``+ H_l(u; b(r))`` and ``theta_0 = 0``),
    ``b'`` the derivative's coefficients and ``S_l`` a TensorSketch: the NTK
    recursion ``Theta^(l) = K^(l) + weight_var T'(K^(l-1)) Theta^(l-1)``.
    ``[..., d_in] -> [..., n_components]``, dtype of the input (radial factors
    in float64). Theory: docs/neural_kernels.md.

    Parameters
    ----------
    d_in : int
    activation : Activation
    depth, degree, n_components : int
    kernel : {"ntk", "nngp"}
    weight_var, bias_var, input_var : float
        ``weight_std**2``, ``bias_std**2`` and the first layer's input scale
        (``weight_var / d_in`` for :func:`~kernelsketch.features.neural_kernel`).
    parameterization : {"ntk", "standard"}
    seed : int, optional
    generator : torch.Generator, optional
        Source of the sketches (one of the two; neither: torch's global generator).
    """

    def __init__(self, d_in, *, activation, depth, degree, n_components, kernel="nngp",
                 weight_var=1.0, bias_var=0.0, input_var=None, parameterization="ntk",
                 seed=None, generator=None):
        super().__init__()
        generator = resolve_generator(seed, generator)
        self.activation, self.depth, self.degree, self.kernel = activation, depth, degree, kernel
        self.weight_var, self.bias_var = float(weight_var), float(bias_var)
        self.input_var = float(weight_var / d_in if input_var is None else input_var)
        self.parameterization = parameterization
        m = n_components
        dims = [d_in + 1] + [m] * depth
        self.series = nn.ModuleList(HornerSketch(dims[h], degree, m, generator=generator)
                                    for h in range(depth))
        self.register_buffer("bias_signs", random_signs((depth, m), generator).double()
                             / math.sqrt(m))
        if kernel == "ntk":
            self.derivative_series = nn.ModuleList(
                HornerSketch(dims[h], degree, m, generator=generator) for h in range(depth)
            )
            self.products = nn.ModuleList(
                TensorPairSketch(d_in + 1 if h == 0 else m, m, m, generator=generator)
                for h in range(depth)
            )
        self.d_out = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features [..., n_components] of x [..., d_in] (dtype of x; half types in float32)."""
        dtype = compute_dtype(x.dtype)
        act, w_std, b_std = self.activation, math.sqrt(self.weight_var), math.sqrt(self.bias_var)
        # The first layer's inputs [sqrt(input_var) x, bias_std] (inner products K^(0)) as a
        # direction and the exact pre-activation std, in float64 (any magnitude).
        first = torch.cat([math.sqrt(self.input_var) * x.to(torch.float64),
                           torch.full((*x.shape[:-1], 1), b_std, dtype=torch.float64,
                                      device=x.device)], -1)
        psi, std = unit_rows(first)
        std = std[..., 0]
        ntk = self.kernel == "ntk"
        theta = (psi * std[..., None]).to(dtype) if self.parameterization == "ntk" else None
        psi = psi.to(dtype)
        for h in range(self.depth):
            u = unit_rows(psi)[0]
            t = self.series[h](u, radial_coefficients(act, std, self.degree).to(dtype))
            psi = w_std * t + b_std * self.bias_signs[h].to(dtype)
            if ntk:
                db = radial_coefficients(act, std, self.degree, derivative=True).to(dtype)
                dt = self.derivative_series[h](u, db)
                new = psi if self.parameterization == "ntk" else t
                theta = new if theta is None else w_std * self.products[h](theta, dt) + new
            std = torch.sqrt(self.weight_var * variance_map(act, std * std) + self.bias_var)
        return (theta if ntk else psi).to(x.dtype)


class ActivationKernelSketch(RandomFeaturesTransformer):
    """Sketched NNGP / NTK of a fully connected network of any activation (scikit-learn transformer).

    ``Z @ Z.T`` approximates :func:`~kernelsketch.features.neural_kernel` with the
    same ``activation``, ``depth``, ``kernel``, ``weight_std``, ``bias_std`` and
    ``parameterization`` (:class:`ActivationSketchMap`: Hermite series with exact
    radial factors, truncated at ``degree`` with the tail folded into the top
    coefficient, sketched by Horner chains of TensorSketches). Error: the
    truncation (zero on the diagonal; largest at correlations near ±1 for
    non-smooth activations) plus a sketching error falling like
    ``1/sqrt(n_components)``.

    Parameters
    ----------
    activation : name in ACTIVATIONS, Activation or callable, default "relu"
        A callable must act elementwise on torch tensors (and be differentiable
        by torch.autograd for the NTK, or be an ``Activation`` with ``derivative``).
    depth : int >= 1, default 1
        Hidden layers.
    kernel : {"nngp", "ntk"}, default "nngp"
    weight_std, bias_std : float >= 0, default 1.0, 0.0
    parameterization : {"ntk", "standard"}, default "ntk"
    n_components : int >= 1, default 256
    degree : int in [1, 64], default 8
        Hermite truncation degree.
    verbose : int, default 0
        ``>= 1``: show the progress of ``transform`` (blocks of 256 rows) on a
        tqdm bar (kept when ``>= 2``), scikit-learn's convention.
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

    def __init__(self, *, activation="relu", depth=1, kernel="nngp", weight_std=1.0,
                 bias_std=0.0, parameterization="ntk", n_components=256, degree=8,
                 random_state=None, verbose=0):
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
        check_network_params(self.activation, self.depth, self.kernel, self.weight_std,
                             self.bias_std, self.parameterization)
        check_int("n_components", self.n_components, min=1)
        check_int("degree", self.degree, min=1, max=64)
        check_int("verbose", self.verbose, min=0)

    def _make_feature_map(self, n_features, generator, X):
        return ActivationSketchMap(
            n_features,
            activation=resolve_activation(self.activation),
            depth=self.depth,
            degree=self.degree,
            n_components=self.n_components,
            kernel=self.kernel,
            weight_var=float(self.weight_std) ** 2,
            bias_var=float(self.bias_std) ** 2,
            parameterization=self.parameterization,
            generator=generator,
        )


def check_network_params(activation, depth, kernel, weight_std, bias_std, parameterization):
    """Validate the network description shared by the neural kernels and their sketches."""
    act = resolve_activation(activation)
    check_int("depth", depth, min=1, max=MAX_DEPTH)
    check_choice("kernel", kernel, ("ntk", "nngp"))
    check_float("weight_std", weight_std, min=0.0)
    check_float("bias_std", bias_std, min=0.0)
    check_choice("parameterization", parameterization, ("ntk", "standard"))
    return act
