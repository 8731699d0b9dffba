"""Gegenbauer (zonal) harmonics on the sphere and random Gegenbauer features.

``P_ℓ`` is the degree-ℓ Gegenbauer polynomial for ``S^{d-1}`` normalised to
``P_ℓ(1) = 1`` and ``α_ℓ = dim H_ℓ`` (arXiv 2202.03474 §2); they reproduce
``E_{w~σ}[P_ℓ(<x, w>) P_ℓ'(<y, w>)] = δ_{ℓℓ'} P_ℓ(<x, y>) / α_ℓ``. A generalized
zonal kernel (GZK) is ``k(x, y) = Σ_j ρ_j(‖x‖) ρ_j(‖y‖) Σ_ℓ a_{jℓ} P_ℓ(<x̂, ŷ>)``,
``a_{jℓ} ≥ 0`` (Gaussian, dot-product and ReLU-NTK kernels, truncated at
``degree``). :class:`GegenbauerFeatures` maps X (n, d) to features whose inner
products are unbiased for the truncated GZK (:func:`gzk_kernel`, float64), a
subspace embedding of ``K + λI`` once the number of directions is of the order of
the statistical dimension (the paper's guarantee).

Theory (notation, recurrences, the three kernel families, truncation):
docs/gegenbauer.md.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from scipy.special import roots_jacobi
from scipy.stats import chi

from kernelsketch._checks import (
    check_allocation,
    check_choice,
    check_float,
    check_int,
    check_random_state,
    check_tensor,
)
from kernelsketch.features._base import RandomFeaturesTransformer, check_points
from kernelsketch.features.ntk import ntk_relu

__all__ = [
    "GegenbauerFeatureMap",
    "GegenbauerFeatures",
    "gegenbauer",
    "gegenbauer_coefficients",
    "gegenbauer_features",
    "gzk_kernel",
    "gzk_series",
    "harmonic_dimension",
    "harmonic_space_dimension",
    "monomial_to_gegenbauer",
    "uniform_sphere",
    "zonal_kernel",
]

KERNELS = ("gaussian", "dot_product", "ntk")
# Largest n_components / degree accepted (sizes above cannot be allocated or evaluated).
_MAX_COMPONENTS = 1 << 26
_MAX_DEGREE = 1000


def gegenbauer(t, degree: int, d: int):
    """Gegenbauer polynomials ``P_0 .. P_degree`` for ``S^{d-1}``, normalised ``P(1) = 1``.

    Evaluated with the three-term recurrence
    ``(ℓ+d-3) P_ℓ(t) = (2ℓ+d-4) t P_{ℓ-1}(t) - (ℓ-1) P_{ℓ-2}(t)``, which is stable on
    [-1, 1] and valid for every d ≥ 2 (Chebyshev for d = 2, Legendre for d = 3).

    Parameters
    ----------
    t : numpy.ndarray or torch.Tensor, any shape
        Points in [-1, 1] (cosines of angles).
    degree : int ≥ 0
    d : int ≥ 2
        Ambient dimension (the sphere is ``S^{d-1}``).

    Returns
    -------
    P : same type, dtype and device as ``t``, shape ``t.shape + (degree + 1,)``
        ``P[..., ℓ] = P_ℓ(t)``.
    """
    check_int("degree", degree, min=0)
    check_int("d", d, min=2)
    is_torch = isinstance(t, torch.Tensor)
    if not is_torch:
        t = np.asarray(t, dtype=np.float64)
    polys = list(_gegenbauer_sequence(t, degree, d))
    return torch.stack(polys, dim=-1) if is_torch else np.stack(polys, axis=-1)


def _gegenbauer_sequence(t, degree: int, d: int):
    """Yield ``P_0(t), ..., P_degree(t)`` (numpy or torch) by the three-term recurrence."""
    prev, cur = t * 0 + 1, t * 1
    yield prev
    if degree >= 1:
        yield cur
    for ell in range(2, degree + 1):
        prev, cur = cur, ((2 * ell + d - 4) * t * cur - (ell - 1) * prev) / (ell + d - 3)
        yield cur


def harmonic_dimension(degree: int, d: int) -> int:
    """Dimension ``α_ℓ`` of the spherical harmonics of degree ℓ on ``S^{d-1}``.

    ``α_0 = 1`` and ``α_ℓ = (2ℓ+d-2)/ℓ · C(ℓ+d-3, ℓ-1)`` for ℓ ≥ 1 (2 for d = 2,
    2ℓ+1 for d = 3).
    """
    check_int("degree", degree, min=0)
    check_int("d", d, min=2)
    if degree == 0:
        return 1
    return (2 * degree + d - 2) * math.comb(degree + d - 3, degree - 1) // degree


def harmonic_space_dimension(degree: int, d: int) -> int:
    """Dimension of the harmonics of degree ≤ ``degree`` on ``S^{d-1}``: ``Σ_ℓ α_ℓ``.

    Equals the number of polynomials of degree ≤ q in d variables restricted to
    the sphere, ``C(q+d-1, d-1) + C(q+d-2, d-1)``.
    """
    check_int("degree", degree, min=0)
    check_int("d", d, min=2)
    return math.comb(degree + d - 1, d - 1) + (math.comb(degree + d - 2, d - 1) if degree else 0)


def _harmonic_dimensions(degree: int, d: int) -> np.ndarray:
    return np.array([harmonic_dimension(ell, d) for ell in range(degree + 1)], dtype=np.float64)


def uniform_sphere(n: int, d: int, random_state=None) -> np.ndarray:
    """Draw ``n`` points uniformly on ``S^{d-1}`` (normalised Gaussians), float64 [n, d].

    ``random_state``: None, an int or a ``numpy.random.RandomState``
    (scikit-learn's meaning; see docs/conventions.md).
    """
    check_int("n", n, min=1)
    check_int("d", d, min=1)
    g = check_random_state(random_state).standard_normal((n, d))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def zonal_kernel(X, Y, degree: int) -> np.ndarray:
    """Reproducing kernel of the harmonics of degree ≤ q: ``Σ_{ℓ≤q} α_ℓ P_ℓ(<x, y>)``.

    It reproduces the degree-≤q part of any f in ``L²(σ)``:
    ``E_{w~σ}[K(x, w) f(w)] = (Π_{≤q} f)(x)``, and ``K(x, x) = dim H_{≤q}``.

    Parameters
    ----------
    X : array of shape (n, d), rows on the unit sphere
    Y : array of shape (m, d), rows on the unit sphere
    degree : int ≥ 0

    Returns
    -------
    K : float64 ndarray of shape (n, m)
    """
    X, Y = check_points(X, Y)
    d = X.shape[1]
    if d < 2:
        raise ValueError(f"X must have d >= 2 columns (points on S^(d-1)), got shape {X.shape}")
    check_int("degree", degree, min=0, max=_MAX_DEGREE)
    _check_table(X, Y, degree)
    t = np.clip(X @ Y.T, -1.0, 1.0)
    return gegenbauer(t, degree, d) @ _harmonic_dimensions(degree, d)


def _check_table(X: np.ndarray, Y: np.ndarray, degree: int) -> None:
    check_allocation(8.0 * len(X) * len(Y) * (degree + 1),
                     f"the (n, m, degree + 1) = ({len(X)}, {len(Y)}, {degree + 1}) Gegenbauer "
                     "table", "lower the degree or evaluate fewer points at a time")


def monomial_to_gegenbauer(max_power: int, d: int) -> np.ndarray:
    """Gegenbauer coefficients of the monomials: ``t^j = Σ_ℓ B[j, ℓ] P_ℓ(t)``.

    Built exactly by multiplying by t with the recurrence
    ``(2ℓ+d-2) t P_ℓ = (ℓ+d-2) P_{ℓ+1} + ℓ P_{ℓ-1}`` (and ``t P_0 = P_1``); all
    entries are ≥ 0, ``B[j, ℓ] = 0`` unless ℓ ≤ j and ℓ ≡ j (mod 2), rows sum to 1.

    Returns
    -------
    B : float64 ndarray of shape (max_power + 1, max_power + 1), lower triangular
    """
    check_int("max_power", max_power, min=0)
    check_int("d", d, min=2)
    B = np.zeros((max_power + 1, max_power + 1))
    B[0, 0] = 1.0
    for j in range(1, max_power + 1):
        prev = B[j - 1]
        B[j, 1] += prev[0]
        for ell in range(1, j):
            B[j, ell + 1] += prev[ell] * (ell + d - 2) / (2 * ell + d - 2)
            B[j, ell - 1] += prev[ell] * ell / (2 * ell + d - 2)
    return B


def gegenbauer_coefficients(
    func: Callable[[np.ndarray], np.ndarray], degree: int, d: int, *, n_nodes: int | None = None
) -> np.ndarray:
    """Gegenbauer coefficients of a function on [-1, 1]: ``f(t) ≈ Σ_{ℓ≤q} c_ℓ P_ℓ(t)``.

    ``c_ℓ = α_ℓ E_{t~μ_d}[f(t) P_ℓ(t)]`` where ``μ_d ∝ (1-t²)^{(d-3)/2}`` is the law of
    ``<x, w>`` for ``w ~ σ``; computed with Gauss–Jacobi quadrature (exact for
    polynomials of degree < 2·n_nodes - degree). For a positive definite zonal
    kernel ``f`` on ``S^{d-1}`` the coefficients are ≥ 0 (Schoenberg).

    Parameters
    ----------
    func : callable, float64 ndarray -> ndarray of the same shape
    degree : int ≥ 0
    d : int ≥ 2
    n_nodes : int, optional
        Quadrature nodes; default ``max(200, 4 * degree)`` (non-smooth f such as the
        ReLU NTK converge slowly at the endpoints).

    Returns
    -------
    c : float64 ndarray of shape (degree + 1,)
    """
    check_int("degree", degree, min=0)
    check_int("d", d, min=2)
    n_nodes = max(200, 4 * degree) if n_nodes is None else check_int("n_nodes", n_nodes, min=1)
    nodes, weights = roots_jacobi(n_nodes, (d - 3) / 2, (d - 3) / 2)
    weights = weights / weights.sum()
    values = np.asarray(func(nodes), dtype=np.float64)
    return _harmonic_dimensions(degree, d) * ((weights * values) @ gegenbauer(nodes, degree, d))


def _relu_ntk_on_sphere(t: np.ndarray, depth: int) -> np.ndarray:
    """NTK κ(t) of a bias-free ReLU network with ``depth`` hidden layers on unit inputs.

    Evaluated through the public oracle :func:`kernelsketch.features.ntk.ntk_relu`
    on pairs of planar unit vectors with inner product t; the bias-free ReLU NTK is
    positively homogeneous, so ``NTK(x, y) = ‖x‖‖y‖ κ(<x̂, ŷ>)``.
    """
    t = np.clip(np.asarray(t, dtype=np.float64), -1.0, 1.0)
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    y = torch.from_numpy(np.stack([t, np.sqrt(1.0 - t**2)], axis=1))
    return np.asarray(ntk_relu(x, y, depth=depth), dtype=np.float64).reshape(-1)


def gzk_series(
    kernel: str,
    degree: int,
    d: int,
    *,
    gamma: float = 1.0,
    coefficients=None,
    depth: int = 1,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Radial / Gegenbauer decomposition of a generalized zonal kernel.

    The kernel is ``Σ_j ρ_j(‖x‖) ρ_j(‖y‖) Σ_ℓ A[j, ℓ] P_ℓ(<x̂, ŷ>)`` with
    ``ρ_j(r) = r^{p_j} exp(-γ_r r²)``:

    - ``"dot_product"``: ``Σ_j c_j <x, y>^j`` truncated at ``j ≤ degree``:
      ``p_j = j``, ``A[j] = c_j B[j]`` with B from :func:`monomial_to_gegenbauer`.
    - ``"gaussian"``: ``exp(-γ‖x-y‖²) = e^{-γ‖x‖²} e^{-γ‖y‖²} Σ_j (2γ)^j <x,y>^j / j!``,
      Taylor series truncated at ``j ≤ degree``: ``γ_r = γ``.
    - ``"ntk"``: bias-free ReLU NTK with ``depth`` hidden layers (as in ``ntk_relu``),
      ``‖x‖‖y‖ κ(<x̂,ŷ>)``, with the Gegenbauer series of κ truncated at ``ℓ ≤ degree``:
      one radial term, ``p = 1``.

    Returns
    -------
    A : float64 ndarray (J, degree + 1), non-negative
    powers : int64 ndarray (J,), the radial powers ``p_j``
    gamma_r : float, the Gaussian radial factor (0 for dot-product kernels and the NTK)
    """
    check_choice("kernel", kernel, KERNELS)
    check_int("degree", degree, min=0)
    if kernel == "ntk":
        check_int("depth", depth, min=1)
        a = gegenbauer_coefficients(lambda t: _relu_ntk_on_sphere(t, depth), degree, d)
        return np.clip(a, 0.0, None)[None, :], np.array([1]), 0.0
    B = monomial_to_gegenbauer(degree, d)
    powers = np.arange(degree + 1)
    if kernel == "gaussian":
        gamma = check_float("gamma", gamma, min=0.0, min_exclusive=True)
        c = np.array([(2 * gamma) ** j / math.factorial(j) for j in powers])
        return c[:, None] * B, powers, gamma
    c = _check_coefficients(coefficients, degree)
    return c[:, None] * B, powers, 0.0


def _check_coefficients(coefficients, degree: int) -> np.ndarray:
    if coefficients is None:
        raise ValueError("coefficients must be given for kernel='dot_product', got None")
    c = np.asarray(coefficients, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"coefficients must be a non-empty 1-D sequence, got shape {c.shape}")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError(
            "coefficients must be finite and >= 0 (a positive definite dot-product kernel), "
            f"got {coefficients!r}"
        )
    return np.pad(c, (0, max(0, degree + 1 - c.size)))[: degree + 1]


def gzk_kernel(
    X,
    Y=None,
    *,
    kernel: str = "gaussian",
    degree: int = 8,
    gamma: float = 1.0,
    coefficients=None,
    depth: int = 1,
) -> np.ndarray:
    """Exact (truncated) generalized zonal kernel matrix from its Gegenbauer series.

    This is the expectation of ``GegenbauerFeatures(...).transform(X) @ ...T`` and the
    oracle for it; as ``degree`` grows it converges to the closed-form kernel (see
    :func:`gzk_series` for the three families).

    Parameters
    ----------
    X : array of shape (n, d)
    Y : array of shape (m, d), optional (defaults to X)
    kernel, degree, gamma, coefficients, depth : see :class:`GegenbauerFeatures`

    Returns
    -------
    K : float64 ndarray of shape (n, m)
    """
    X, Y = check_points(X, Y)
    d = max(X.shape[1], 2)
    check_int("degree", degree, min=0, max=_MAX_DEGREE)
    _check_table(X, Y, degree)
    A, powers, gamma_r = gzk_series(
        kernel, degree, d, gamma=gamma, coefficients=coefficients, depth=depth
    )
    rx, ry = np.linalg.norm(X, axis=1), np.linalg.norm(Y, axis=1)
    t = (X / np.maximum(rx, 1e-300)[:, None]) @ (Y / np.maximum(ry, 1e-300)[:, None]).T
    P = gegenbauer(np.clip(t, -1.0, 1.0), A.shape[1] - 1, d)  # (n, m, L)
    radial_x = rx[:, None] ** powers * np.exp(-gamma_r * rx**2)[:, None]  # (n, J)
    radial_y = ry[:, None] ** powers * np.exp(-gamma_r * ry**2)[:, None]
    return np.einsum("nj,mj,nml,jl->nm", radial_x, radial_y, P, A)


def gegenbauer_features(
    x: torch.Tensor,
    directions: torch.Tensor,
    sqrt_weights: torch.Tensor,
    powers: torch.Tensor,
    gamma: float = 0.0,
) -> torch.Tensor:
    """Random Gegenbauer features (torch; any device, any float dtype, batched).

    ``φ(x)[i, j] = ρ_j(‖x‖) Σ_ℓ S[j, ℓ] P_ℓ(<x̂, w_i>) / sqrt(m)`` with
    ``ρ_j(r) = r^{p_j} e^{-γ r²}`` and ``S[j, ℓ] = sqrt(α_ℓ A[j, ℓ])``
    (docs/gegenbauer.md); ``E[<φ(x), φ(y)>]`` is the GZK ``k(x, y)`` for directions
    ``w_i ~ σ``.

    Parameters
    ----------
    x : Tensor [..., d]
    directions : Tensor [m, d], rows on the unit sphere
    sqrt_weights : Tensor [J, L], ``sqrt(α_ℓ A[j, ℓ])``
    powers : Tensor [J], radial powers
    gamma : float ≥ 0, Gaussian radial factor

    Returns
    -------
    Tensor [..., m * J] in the dtype of ``x`` (features ordered direction-major)
    """
    m, d = directions.shape
    S = sqrt_weights.to(x.dtype)  # [J, L]
    r = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    u = (x / r.clamp_min(torch.finfo(x.dtype).tiny)) @ directions.to(x.dtype).T  # [..., m]
    u = u.clamp(-1.0, 1.0).unsqueeze(-1)  # [..., m, 1]
    # Accumulate Σ_ℓ S[:, ℓ] P_ℓ(u) along the recurrence, so memory stays O(output)
    # instead of holding all L polynomials.
    per_direction = 0
    for ell, p_ell in enumerate(_gegenbauer_sequence(u, S.shape[1] - 1, d)):
        per_direction = per_direction + p_ell * S[:, ell]  # [..., m, J]
    radial = r ** powers.to(x.dtype) * torch.exp(-gamma * r * r)  # [..., J]
    z = per_direction * radial.unsqueeze(-2) / math.sqrt(m)
    return z.reshape(*x.shape[:-1], m * S.shape[0])


class GegenbauerFeatureMap(torch.nn.Module):
    """Fitted random Gegenbauer feature map ``[..., d_in] -> [..., d_out]`` (see
    :func:`gegenbauer_features`); inputs with ``d_in = 1`` are padded with a zero
    coordinate (kernels depend on norms and inner products only)."""

    def __init__(self, directions, sqrt_weights, powers, gamma: float, d_in: int):
        super().__init__()
        self.register_buffer("directions", directions)
        self.register_buffer("sqrt_weights", sqrt_weights)
        self.register_buffer("powers", powers)
        self.gamma = float(gamma)
        self.d_in = int(d_in)
        self.d_out = int(directions.shape[0] * sqrt_weights.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x)
        if x.shape[-1] != self.d_in:
            raise ValueError(
                f"x must have {self.d_in} features in its last dimension, got shape {list(x.shape)}"
            )
        if self.d_in == 1:
            x = torch.cat([x, torch.zeros_like(x)], dim=-1)
        work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        z = gegenbauer_features(
            x.to(work), self.directions, self.sqrt_weights, self.powers, self.gamma
        )
        return z.to(x.dtype)


class PlaneWaveMap(torch.nn.Module):
    """Gegenbauer features of the Gaussian kernel, summed in closed form: ``[..., d] -> [..., m]``.

    For ``p = m // 2`` frequencies (rows of ``frequencies`` [p + m % 2, d]):
    ``phi(x) = [cos(x Ω^T), sin(x Ω^T)] / sqrt(p + h / 2)`` and, for odd ``m`` (``h = 1``),
    one more feature ``cos(ω_0 · x + phase) / sqrt(p + 1/2)``; so ``<phi(x), phi(y)>`` is a
    weighted mean of ``cos(ω_i · (x - y))`` (and of ``2 cos(ω_0 x + b) cos(ω_0 y + b)``),
    unbiased for the Gaussian (docs/gegenbauer.md, "Gaussian kernel").
    """

    def __init__(self, frequencies: torch.Tensor, n_components: int, phase: float = 0.0):
        super().__init__()
        self.register_buffer("frequencies", frequencies)
        self.d_in = int(frequencies.shape[1])
        self.pairs, self.odd = n_components // 2, n_components % 2
        self.phase = float(phase)
        self.d_out = int(n_components)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x)
        if x.shape[-1] != self.d_in:
            raise ValueError(
                f"x must have {self.d_in} features in its last dimension, got shape {list(x.shape)}"
            )
        work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        lead, p = x.shape[:-1], self.pairs
        u = x.reshape(-1, self.d_in).to(work) @ self.frequencies.to(work).T  # [n, p + odd]
        # written into the output: memory is the output plus the [n, m / 2] projections
        z = u.new_empty(len(u), self.d_out)
        torch.cos(u[:, :p], out=z[:, :p])
        torch.sin(u[:, :p], out=z[:, p:2 * p])
        if self.odd:
            torch.cos(u[:, p:].add_(self.phase), out=z[:, 2 * p:])
        z.mul_(1.0 / math.sqrt(p + self.odd / 2))
        return z.reshape(*lead, self.d_out).to(x.dtype)


def gaussian_frequencies(p: int, d: int, gamma: float, generator: torch.Generator) -> torch.Tensor:
    """``p`` frequencies ``ω_i = sqrt(2 gamma) R_i w_i``, each ``~ N(0, 2 gamma I_d)``, float64 [p, d].

    Directions ``w_i``: rows of independent uniformly random orthogonal ``d x d`` matrices
    (orthogonal within each block of ``d``); radii ``R_i ~ chi_d`` stratified: the quantile
    ``(π_i + U_i) / p`` of ``chi_d`` for a random permutation ``π`` and uniform ``U``. Every
    ``ω_i`` has the Gaussian's spectral law, so ``E[cos(ω_i · δ)] = exp(-gamma |δ|^2)``.
    """
    blocks = []
    for _ in range(-(-p // d)):
        g = torch.randn(d, d, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        blocks.append(q * torch.sign(torch.diagonal(r)))  # Haar: fix the QR sign convention
    directions = torch.cat(blocks)[:p] if d > 1 else torch.sign(
        torch.randn(p, 1, generator=generator, dtype=torch.float64))
    strata = torch.randperm(p, generator=generator).double()
    u = (strata + torch.rand(p, generator=generator, dtype=torch.float64)) / p
    radii = torch.from_numpy(chi.ppf(u.numpy(), d))
    return math.sqrt(2.0 * gamma) * radii[:, None] * directions


def _feature_kurtosis(A: np.ndarray, powers: np.ndarray, gamma_r: float, d: int,
                      radius: float) -> float:
    """``E_w[|phi_w(x)|^4] / E_w[|phi_w(x)|^2]^2`` of one direction's features at norm ``radius``.

    By Gauss–Jacobi quadrature over ``u = <x̂, w> ~ μ_d``; the relative variance of one
    direction's estimate of ``k(x, x)`` is this minus 1.
    """
    nodes, weights = roots_jacobi(200, (d - 3) / 2, (d - 3) / 2)
    weights = weights / weights.sum()
    S = np.sqrt(_harmonic_dimensions(A.shape[1] - 1, d) * A)  # [J, L]
    g = gegenbauer(nodes, A.shape[1] - 1, d) @ S.T  # [nodes, J]
    log_rho = powers.astype(np.float64) * math.log(radius) - gamma_r * radius**2
    rho = np.exp(log_rho - log_rho.max())  # the ratio is scale-free: no overflow
    F = (g * rho) ** 2  # per-feature squares
    F = F.sum(1)
    m2 = float(weights @ F)
    return float(weights @ F**2) / m2**2 if m2 > 0 else 1.0


class GegenbauerFeatures(RandomFeaturesTransformer):
    """Random Gegenbauer features for generalized zonal kernels (GZK).

    Draws ``m`` directions uniformly on ``S^{d-1}`` and maps x to
    ``[ρ_j(‖x‖) Σ_ℓ sqrt(α_ℓ A[j,ℓ]) P_ℓ(<x̂, w_i>)]_{i,j} / sqrt(m)``, whose inner
    products are unbiased for the degree-truncated kernel :func:`gzk_kernel`
    (arXiv 2202.03474, Def. of GZK and Gegenbauer features). The paper proves a
    subspace-embedding guarantee ``(1-ε)(K+λI) ⪯ ZZᵀ+λI ⪯ (1+ε)(K+λI)`` once m is of
    the order of the statistical dimension of K (times log factors).

    Parameters
    ----------
    kernel : {"gaussian", "dot_product", "ntk"}, default="gaussian"
        ``exp(-gamma ‖x-y‖²)``; ``Σ_j coefficients[j] <x,y>^j``; bias-free ReLU NTK
        with ``depth`` hidden layers.
    degree : int, default=8
        Truncation: Taylor degree for "gaussian"/"dot_product" (error
        ``≤ Σ_{j>q} (2γ r²)^j / j!`` for radii ≤ r), Gegenbauer degree for "ntk".
    n_components : int, default=256
        Requested number of features. Each direction gives J features (J = degree+1
        radial terms, or 1 for "ntk"), so ``m = max(1, n_components // J)``
        directions are drawn and ``n_components_ = m * J`` features are produced.
    gamma : float, default=1.0
        Gaussian bandwidth (only for "gaussian").
    coefficients : array-like of non-negative floats, optional
        Taylor coefficients of the dot-product kernel (only for "dot_product").
    depth : int, default=1
        Number of hidden ReLU layers of the NTK, as in
        :func:`kernelsketch.features.ntk.ntk_relu` (only for "ntk").
    random_state : int, RandomState or None
        Seeds the directions drawn in ``fit``.

    Attributes
    ----------
    feature_map_ : GegenbauerFeatureMap (torch module; ``.to("cuda")`` for GPU batches)
    n_components_ : int
    n_features_in_ : int

    References
    ----------
    I. Han, A. Zandieh, H. Avron. Random Gegenbauer Features for Scalable Kernel
    Methods. ICML 2022, arXiv 2202.03474.
    """

    _fit_reads_data = False  # the map depends on n_features only: fit takes Dask arrays

    def __init__(
        self,
        *,
        kernel: str = "gaussian",
        degree: int = 8,
        n_components: int = 256,
        gamma: float = 1.0,
        coefficients=None,
        depth: int = 1,
        random_state=None,
    ):
        self.kernel = kernel
        self.degree = degree
        self.n_components = n_components
        self.gamma = gamma
        self.coefficients = coefficients
        self.depth = depth
        self.random_state = random_state

    def _check_params(self, n_features: int) -> None:
        check_choice("kernel", self.kernel, KERNELS)
        check_int("degree", self.degree, min=0, max=_MAX_DEGREE)
        check_int("n_components", self.n_components, min=1, max=_MAX_COMPONENTS)
        if self.kernel == "gaussian":
            check_float("gamma", self.gamma, min=0.0, min_exclusive=True)
        if self.kernel == "dot_product" or self.coefficients is not None:
            _check_coefficients(self.coefficients, self.degree)
        if self.kernel == "ntk":
            check_int("depth", self.depth, min=1)
        if self.kernel != "gaussian":
            alpha = harmonic_dimension(self.degree, max(n_features, 2))
            if alpha > 1e150:
                raise ValueError(
                    f"degree must keep the harmonic dimension finite in float64 for "
                    f"{n_features} features (dim H_degree = {float(alpha):.3g} at degree="
                    f"{self.degree}); use a smaller degree"
                )

    def _make_feature_map(self, n_features, generator, X):
        if self.kernel == "gaussian":
            m = self.n_components
            freq = gaussian_frequencies(m // 2 + m % 2, n_features, float(self.gamma), generator)
            phase = float(2 * math.pi * torch.rand(1, generator=generator, dtype=torch.float64))
            self.n_components_ = m
            return PlaneWaveMap(freq, m, phase)
        d = max(n_features, 2)
        A, powers, gamma_r = gzk_series(
            self.kernel,
            self.degree,
            d,
            gamma=self.gamma,
            coefficients=self.coefficients,
            depth=self.depth,
        )
        sqrt_weights = np.sqrt(_harmonic_dimensions(A.shape[1] - 1, d) * A)
        m = max(1, self.n_components // A.shape[0])
        g = torch.randn(m, d, generator=generator, dtype=torch.float64)
        directions = g / torch.linalg.vector_norm(g, dim=1, keepdim=True)
        self.n_components_ = m * A.shape[0]
        self._warn_if_high_variance(A, powers, gamma_r, d, m, X)
        return GegenbauerFeatureMap(
            directions,
            torch.from_numpy(sqrt_weights),
            torch.from_numpy(powers.astype(np.float64)),
            gamma_r,
            n_features,
        )

    def _warn_if_high_variance(self, A, powers, gamma_r, d, m, X) -> None:
        """Warn when one direction's estimate of ``k(x, x)`` is so noisy that ``m``
        directions leave a relative error above 0.5 at the median training norm."""
        radius = float(torch.linalg.vector_norm(X.double(), dim=1).median()) if len(X) else 1.0
        kurt = _feature_kurtosis(A, powers, gamma_r, d, radius) if radius > 0 else 1.0
        self.expected_diagonal_error_ = math.sqrt(max(kurt - 1.0, 0.0) / m)
        if self.expected_diagonal_error_ > 0.5:
            warnings.warn(
                f"GegenbauerFeatures(kernel={self.kernel!r}, degree={self.degree}): one "
                f"direction's estimate of k(x, x) has relative variance {kurt - 1:.3g} in "
                f"d={d} at the median norm {radius:.3g}, so {m} directions leave a relative "
                f"error of about {self.expected_diagonal_error_:.2f}; use more n_components, a "
                "lower degree, or Nystroem features for this kernel", UserWarning, stacklevel=4)
