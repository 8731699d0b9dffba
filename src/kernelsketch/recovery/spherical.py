"""Recovery of spherical-harmonic expansions from random samples (arXiv 2202.12995).

On ``S^{d-1}`` the harmonics of degree ≤ q, ``H_{≤q}`` of dimension ``β``, have a
constant leverage function (``K_q(x, x) = β``), so uniform samples are
leverage-score samples. :func:`recover_spherical` draws ``s`` uniform points
(float64 (s, d)) and fits ``g = Σ_i c_i K_q(·, w_i)`` by kernel (ridge)
regression with the Gegenbauer reproducing kernel ``K_q``: exact for f ∈ ``H_{≤q}``
once s ≥ β, within a constant factor of the best degree-q approximation of any f
once s ≳ β log β (the paper's near-optimality).

Theory: docs/recovery.md.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import scipy.linalg

from kernelsketch._checks import check_float, check_int, check_random_state
from kernelsketch.features.gegenbauer import (
    gegenbauer,
    harmonic_dimension,
    harmonic_space_dimension,
    uniform_sphere,
)

__all__ = ["SphericalExpansion", "default_spherical_samples", "recover_spherical"]


def default_spherical_samples(d: int, degree: int) -> int:
    """Default sample count ``ceil(β · max(2, ln β))`` with ``β = dim H_{≤q}`` on ``S^{d-1}``.

    The log factor is the coupon-collector / matrix-Chernoff term of leverage-score
    sampling (arXiv 2202.12995, Thm. on O(β log β) samples); ``max(2, ·)`` keeps
    at least a 2x oversampling for tiny spaces.
    """
    check_int("d", d, min=2, max=MAX_DIMENSION)
    check_int("degree", degree, min=0, max=MAX_DEGREE)
    beta = harmonic_space_dimension(degree, d)
    # exact for a β beyond float64 (d = 1000, degree = 10**4): the count is then refused
    return math.ceil(Fraction(beta) * Fraction(max(2.0, math.log(beta))))


# The solve holds s x s matrices and the Gegenbauer table s x s x (degree + 1) float64:
# at most 2**14 samples and 2**27 table entries (1 GiB).
MAX_SAMPLES = 2**14
MAX_TABLE = 2**27
# the (s, d) nodes and the table's degree + 1 columns: dimensions beyond these cannot fit
MAX_DIMENSION = 2**20
MAX_DEGREE = 2**14


class SphericalExpansion:
    """A recovered degree-≤q expansion ``g(x) = Σ_i c_i K_q(x, w_i)`` on ``S^{d-1}``.

    Attributes
    ----------
    d : int
    degree : int
    nodes : float64 ndarray (s, d), the sample points ``w_i`` on the sphere
    values : float64 ndarray (s,), the observed ``f(w_i)``
    coef : float64 ndarray (s,), the kernel weights ``c_i``
    dimension : int, ``dim H_{≤q}``
    """

    def __init__(
        self, d: int, degree: int, nodes: np.ndarray, values: np.ndarray, coef: np.ndarray
    ):
        self.d = d
        self.degree = degree
        self.nodes = nodes
        self.values = values
        self.coef = coef
        self.dimension = harmonic_space_dimension(degree, d)
        self._alpha = np.array([harmonic_dimension(ell, d) for ell in range(degree + 1)], float)

    def _check_points(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.d:
            raise ValueError(f"X must have shape (n, {self.d}), got shape {X.shape}")
        if not np.all(np.isfinite(X)):
            raise ValueError("X must be finite, found NaN or infinite values")
        norms = np.linalg.norm(X, axis=1)
        if np.any(np.abs(norms - 1.0) > 1e-6):
            raise ValueError(
                f"X must have unit-norm rows (points on S^{self.d - 1}), got norms in "
                f"[{norms.min():.3g}, {norms.max():.3g}]"
            )
        return X

    def components(self, X) -> np.ndarray:
        """Per-degree components ``g_ℓ(x) = Σ_i c_i α_ℓ P_ℓ(<x, w_i>)`` (``g = Σ_ℓ g_ℓ``).

        Parameters
        ----------
        X : array (n, d), unit-norm rows

        Returns
        -------
        float64 ndarray (n, degree + 1); column ℓ is the projection of g onto ``H_ℓ``.
        """
        X = self._check_points(X)
        out = np.empty((len(X), self.degree + 1))
        step = max(1, MAX_TABLE // (len(self.nodes) * (self.degree + 1)))  # bounded memory
        for i in range(0, len(X), step):
            cos = np.clip(X[i : i + step] @ self.nodes.T, -1.0, 1.0)
            P = gegenbauer(cos, self.degree, self.d)  # (step, s, L)
            out[i : i + step] = np.einsum("nsl,s->nl", P, self.coef) * self._alpha
        return out

    def __call__(self, X) -> np.ndarray:
        """Evaluate g at the rows of X (n, d) on the sphere; returns float64 (n,)."""
        return self.components(X).sum(axis=1)


def recover_spherical(
    f: Callable[[np.ndarray], np.ndarray],
    d: int,
    degree: int,
    n_samples: int | None = None,
    *,
    regularization: float = 0.0,
    rcond: float = 1e-10,
    random_state=None,
) -> SphericalExpansion:
    """Recover the degree-≤q spherical-harmonic expansion of ``f`` from random samples.

    Draws ``n_samples`` points uniformly on ``S^{d-1}`` (= leverage-score sampling
    for ``H_{≤q}``, see docs/recovery.md), evaluates f there once, and solves
    the kernel regression with the degree-≤q Gegenbauer reproducing kernel.

    Parameters
    ----------
    f : callable
        Maps a float64 array (s, d) of unit vectors to s real values (noise allowed).
    d : int, 2 to ``MAX_DIMENSION = 2**20``
        Ambient dimension.
    degree : int, 0 to ``MAX_DEGREE = 2**14``
        Maximal harmonic degree q.
    n_samples : int, optional
        Number of samples s; default :func:`default_spherical_samples`
        (``ceil(β max(2, ln β))``). With s < β the problem is underdetermined and a
        warning is issued. At most ``MAX_SAMPLES = 2**14``, with
        ``s² (degree + 1) <= MAX_TABLE = 2**27`` (the Gegenbauer table).
    regularization : float ≥ 0, default=0
        Ridge parameter λ of ``min (1/s) Σ (g(w_i) - f(w_i))² + λ ‖g‖²_{L²(σ)}``;
        0 gives the least-squares fit (pseudo-inverse), exact for f ∈ ``H_{≤q}``.
    rcond : float in (0, 1), default=1e-10
        Relative eigenvalue cut-off of the pseudo-inverse when ``regularization=0``.
    random_state : int, numpy.random.RandomState or None
        Source of the sample points, scikit-learn's meaning (None: numpy's global
        RandomState; an int: a new ``RandomState(int)``; a RandomState: used as is).

    Returns
    -------
    SphericalExpansion
        Callable on (n, d) unit vectors; ``.components(X)`` gives per-degree parts.

    References
    ----------
    A. Zandieh, I. Han, H. Avron. Near Optimal Reconstruction of Spherical Harmonic
    Expansions. arXiv 2202.12995.
    """
    if not callable(f):
        raise TypeError(f"f must be callable (array (s, d) -> (s,)), got {type(f).__name__}")
    check_int("d", d, min=2, max=MAX_DIMENSION)
    check_int("degree", degree, min=0, max=MAX_DEGREE)
    beta = harmonic_space_dimension(degree, d)
    if n_samples is None:
        n_samples = default_spherical_samples(d, degree)
        if n_samples > MAX_SAMPLES:
            raise ValueError(
                f"n_samples must be <= {MAX_SAMPLES}; its default for d={d}, degree={degree} "
                f"is {_approx(n_samples)} (dim H_<=q = {_approx(beta)}): lower the degree"
            )
    check_int("n_samples", n_samples, min=1, max=MAX_SAMPLES)
    if n_samples**2 * (degree + 1) > MAX_TABLE:
        raise ValueError(
            f"n_samples must satisfy n_samples**2 * (degree + 1) <= {MAX_TABLE} (the "
            f"Gegenbauer table), got n_samples={n_samples} with degree={degree}"
        )
    check_float("regularization", regularization, min=0.0)
    check_float("rcond", rcond, min=0.0, max=1.0, min_exclusive=True)
    rng = check_random_state(random_state)
    if n_samples < beta:
        warnings.warn(
            f"n_samples={n_samples} is below dim H_<=q = {beta} (d={d}, degree={degree}): "
            "the expansion is underdetermined and will not be recovered",
            UserWarning,
            stacklevel=2,
        )
    nodes = uniform_sphere(n_samples, d, rng)
    values = _evaluate(f, nodes)
    alpha = np.array([harmonic_dimension(ell, d) for ell in range(degree + 1)], float)
    K = gegenbauer(np.clip(nodes @ nodes.T, -1.0, 1.0), degree, d) @ alpha
    if regularization > 0:
        K[np.diag_indices_from(K)] += n_samples * regularization
        coef = scipy.linalg.solve(K, values, assume_a="pos")
    else:
        evals, evecs = scipy.linalg.eigh(K)
        keep = evals > rcond * evals[-1]
        coef = evecs[:, keep] @ ((evecs[:, keep].T @ values) / evals[keep])
    return SphericalExpansion(d, degree, nodes, values, coef)


def _approx(count: int) -> str:
    return f"{count:.3g}" if count < 10**300 else f"~1e{len(str(count)) - 1}"


def _evaluate(f, nodes: np.ndarray) -> np.ndarray:
    values = np.asarray(f(nodes.copy()))
    if values.dtype.kind not in "biuf":
        raise TypeError(
            f"f must return real numbers (the expansion is real), got dtype {values.dtype}"
        )
    values = values.astype(np.float64)
    if values.shape != (len(nodes),):
        raise ValueError(
            f"f must return one value per sample, shape ({len(nodes)},), got shape {values.shape}"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError("f must return finite values, found NaN or infinite values")
    return values
