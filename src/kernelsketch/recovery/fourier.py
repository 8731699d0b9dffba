"""Reconstruction of signals with constrained Fourier structure on [0, T] by universal
sampling (Avron, Kapralov, Musco, Musco, Velingker, Zandieh, STOC 2019, arXiv 1812.08723).

A signal class is the RKHS of a stationary kernel ``k(τ) = ∫ e^{2πiξτ} dμ(ξ)``
given by its power spectrum μ (bandlimited, multiband, sparse frequencies,
Gaussian / Matérn / user spectra). :func:`reconstruct_signal` samples times from
the universal density ``p(t) ∝ 1 / max(min(t, T - t), δT)``, ``δ = min(1/4, 1/s_λ²)``,
which depends on μ only through the statistical dimension
``s_λ = tr(𝒦(𝒦 + λI)^{-1})`` (:func:`statistical_dimension`) and dominates every
class's ridge leverage function up to a log factor, and solves the weighted kernel
ridge regression of Alg. 1. Guarantee (Thm. 1): ``O(s_λ log² s_λ)`` samples give
``‖x̃ - x‖_T² ≤ C (‖noise‖_T² + λ ‖x‖_μ²)`` with high probability. Times and
values are float64 (complex128 for complex samples).

Theory (the model, the density, the estimator, the mixture default, measured
constants): docs/recovery.md.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.special import gamma as gamma_fn
from scipy.special import gammaln, kv, kve

from kernelsketch._checks import check_choice, check_float, check_int, check_random_state

__all__ = [
    "Bandlimited",
    "GaussianSpectrum",
    "MaternSpectrum",
    "Multiband",
    "PowerSpectrum",
    "ReconstructedSignal",
    "SparseFrequencies",
    "default_signal_samples",
    "reconstruct_signal",
    "sample_universal",
    "statistical_dimension",
    "universal_density",
]


# --- power spectra --------------------------------------------------------------------
# Each spectrum gives its kernel k(τ) (complex in general, real when μ is symmetric)
# and a frequency scale used to size the quadrature that discretizes 𝒦.


@dataclass(frozen=True)
class Bandlimited:
    """Flat spectrum on ``[-bandwidth, bandwidth]`` (unit power): ``k(τ) = sinc(2Fτ)``."""

    bandwidth: float

    def __post_init__(self):
        check_float("bandwidth", self.bandwidth, min=0.0, min_exclusive=True)

    def kernel(self, tau: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # an overflowed argument: the limit 0
            x = 2 * self.bandwidth * _lags(tau)
        return _sinc(x)

    def frequency_scale(self) -> float:
        return self.bandwidth


@dataclass(frozen=True)
class Multiband:
    """Flat spectrum on a union of bands ``[(lo, hi), ...]`` (unit total power).

    ``k(τ) = Σ_b (w_b / W) e^{2πi c_b τ} sinc(w_b τ)`` with centre c_b, width w_b,
    ``W = Σ w_b``. Real signals need bands symmetric about 0.
    """

    bands: Sequence[tuple[float, float]]

    def __post_init__(self):
        bands = np.asarray(self.bands, dtype=np.float64)
        if bands.ndim != 2 or bands.shape[1] != 2 or len(bands) == 0:
            raise ValueError(
                f"bands must be a non-empty sequence of (lo, hi) pairs, got {self.bands!r}"
            )
        if not np.all(np.isfinite(bands)) or np.any(bands[:, 1] <= bands[:, 0]):
            raise ValueError(f"bands must be finite with lo < hi, got {self.bands!r}")
        object.__setattr__(self, "bands", tuple(map(tuple, bands.tolist())))

    def kernel(self, tau):
        bands = np.asarray(self.bands)
        width, centre = bands[:, 1] - bands[:, 0], bands.mean(axis=1)
        tau = _lags(tau)[..., None]
        with np.errstate(over="ignore"):  # overflowed products are handled below
            cycles, x = centre * tau, width * tau
        terms = width * _phase(cycles) * _sinc(x)
        return _maybe_real(terms.sum(-1) / width.sum())

    def frequency_scale(self) -> float:
        return float(np.abs(np.asarray(self.bands)).max())


@dataclass(frozen=True)
class SparseFrequencies:
    """Spectrum on finitely many known frequencies (Fourier-sparse signals).

    ``k(τ) = Σ_j w_j e^{2πi f_j τ} / Σ_j w_j``; the signal class is the span of the
    exponentials. Include ``-f`` with every ``f`` for real signals.
    """

    frequencies: Sequence[float]
    weights: Sequence[float] | None = None

    def __post_init__(self):
        f = np.asarray(self.frequencies, dtype=np.float64).reshape(-1)
        if f.size == 0 or not np.all(np.isfinite(f)):
            raise ValueError(
                f"frequencies must be a non-empty finite sequence, got {self.frequencies!r}"
            )
        w = np.ones_like(f) if self.weights is None else np.asarray(self.weights, dtype=np.float64)
        if w.shape != f.shape or not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ValueError(
                f"weights must be {f.size} finite positive numbers (one per frequency), got {self.weights!r}"
            )
        object.__setattr__(self, "frequencies", tuple(f.tolist()))
        object.__setattr__(self, "weights", tuple(w.tolist()))

    def kernel(self, tau):
        f, w = np.asarray(self.frequencies), np.asarray(self.weights)
        tau = _lags(tau)[..., None]
        with np.errstate(over="ignore"):  # an overflowed product raises in _phase
            cycles = f * tau
        return _maybe_real((w * _phase(cycles)).sum(-1) / w.sum())

    def frequency_scale(self) -> float:
        return float(np.abs(np.asarray(self.frequencies)).max())


@dataclass(frozen=True)
class GaussianSpectrum:
    """Gaussian process prior with squared-exponential covariance (1-D kriging).

    ``k(τ) = exp(-τ² / (2 ℓ²))``, spectrum ``∝ exp(-2π² ℓ² ξ²)``.
    """

    lengthscale: float

    def __post_init__(self):
        check_float("lengthscale", self.lengthscale, min=0.0, min_exclusive=True)

    def kernel(self, tau):
        with np.errstate(over="ignore"):  # (τ/ℓ)² beyond float64: the kernel is 0
            return np.exp(-0.5 * (_lags(tau) / self.lengthscale) ** 2)

    def frequency_scale(self) -> float:
        return 1.0 / self.lengthscale


@dataclass(frozen=True)
class MaternSpectrum:
    """Gaussian process prior with Matérn(ν) covariance (1-D kriging).

    ``k(τ) = 2^{1-ν}/Γ(ν) (√(2ν)|τ|/ℓ)^ν K_ν(√(2ν)|τ|/ℓ)``, spectrum
    ``∝ (2ν/ℓ² + 4π²ξ²)^{-(ν+1/2)}``.
    """

    nu: float
    lengthscale: float

    def __post_init__(self):
        check_float("nu", self.nu, min=0.0, min_exclusive=True)
        check_float("lengthscale", self.lengthscale, min=0.0, min_exclusive=True)

    def kernel(self, tau):
        with np.errstate(over="ignore"):  # τ/ℓ beyond float64: the kernel is 0
            return _matern(self.nu, _lags(tau) / self.lengthscale)

    def frequency_scale(self) -> float:
        return 4.0 / self.lengthscale


_DEBYE_NU = 50.0  # above it, where the closed form over- or underflows, the Debye expansion


def _matern(nu: float, x: np.ndarray) -> np.ndarray:
    """The Matérn(ν) correlation at ``x = τ / ℓ``, finite for every ν > 0 and finite x.

    The closed form ``2^{1-ν}/Γ(ν) r^ν K_ν(r)``, ``r = √(2ν)|x|``, over- or underflows
    (``Γ(ν)`` beyond ν = 171, ``r^ν`` and ``K_ν(r)`` at small or large r); there the
    logarithm is used: through ``kve`` for ν <= 50, through the Debye expansion of
    ``K_ν`` for larger ν (:func:`_debye_log_matern`, relative error below 6e-11 at
    ν = 50.5 and 1e-12 from ν = 100; used alone beyond ν = 170, where ``Γ(ν)`` overflows).
    """
    x = np.abs(x)
    with np.errstate(over="ignore"):
        rho = 2.0 * x * x  # r² / ν
    if nu > 170:
        return _debye_matern(nu, rho)
    r = math.sqrt(2 * nu) * x
    with np.errstate(all="ignore"):
        k = 2 ** (1 - nu) / gamma_fn(nu) * r**nu * kv(nu, r)
        bad = ~np.isfinite(k) & (r > 0)
        if bad.any() and nu > _DEBYE_NU:
            k[bad] = _debye_matern(nu, rho[bad])
        elif bad.any():
            rb = r[bad]
            scaled = kve(nu, rb)  # K_ν(r) e^r
            log_k = (1 - nu) * math.log(2) - gammaln(nu) + nu * np.log(rb) + np.log(scaled) - rb
            # kve overflows only as r -> 0, where k = 1 to double precision for ν <= 50; it
            # underflows or loses all precision (NaN) only at r > 1e4, where k < 1e-4000
            k[bad] = np.where(np.isinf(scaled), 1.0, np.where(scaled > 0, np.exp(log_k), 0.0))
    return np.where(r == 0, 1.0, np.minimum(k, 1.0))  # k <= 1; rounding gave 1 + 2e-16


def _debye_matern(nu: float, rho: np.ndarray) -> np.ndarray:
    # normalised by the expansion's own value at 0 (its truncation error there, 2e-12 at
    # ν = 50), so k(0) = 1 exactly and small lags are accurate to ~1e-14
    with np.errstate(over="ignore", invalid="ignore"):
        log_k = _debye_log_matern(nu, rho) - _debye_log_matern(nu, np.zeros(1))[0]
    return np.where(np.isfinite(rho), np.minimum(np.exp(log_k), 1.0), 0.0)


def _debye_log_matern(nu: float, rho: np.ndarray) -> np.ndarray:
    """log of the Matérn(ν) correlation at ``r² = ν ρ`` from the Debye expansion of
    ``K_ν(ν z)`` (DLMF 10.41.4, four terms) and Stirling's series for ``log Γ(ν)``.

    With ``z = r / ν``, ``w = √(1 + z²)``, ``s = w - 1`` the large terms cancel exactly:
    ``log k = ν (log(1 + s/2) - s) - log(w) / 2 - (Stirling remainder) + log Σ_k (-1)^k
    u_k(1/w) / ν^k``, which tends to the Gaussian ``-ρ/4 = -τ²/(2ℓ²)`` as ν -> ∞.
    """
    inv = 1.0 / nu
    z2 = rho * inv
    w = np.sqrt(1.0 + z2)
    s = z2 / (1.0 + w)
    nu_s = rho / (1.0 + w)  # ν s, without forming ν
    safe = np.where(s > 0, s, 1.0)
    g_over_s = np.where(s > 0, (np.log1p(s / 2) - s) / safe, -0.5)
    t = 1.0 / w
    t2 = t * t
    u1 = t * (3 - 5 * t2) / 24
    u2 = t2 * (81 - 462 * t2 + 385 * t2**2) / 1152
    u3 = t**3 * (30375 - 369603 * t2 + 765765 * t2**2 - 425425 * t2**3) / 414720
    u4 = t2**2 * (
        4465125 - 94121676 * t2 + 349922430 * t2**2 - 446185740 * t2**3 + 185910725 * t2**4
    ) / 39813120
    series = 1 - inv * (u1 - inv * (u2 - inv * (u3 - inv * u4)))
    stirling = inv * (1 / 12 - inv**2 * (1 / 360 - inv**2 * (1 / 1260 - inv**2 / 1680)))
    return nu_s * g_over_s - 0.5 * np.log1p(s) - stirling + np.log(series)


@dataclass(frozen=True)
class PowerSpectrum:
    """A user-given power spectral density on a bounded support (normalised to unit power).

    ``k(τ) = ∫_lo^hi density(ξ) e^{2πiξτ} dξ / ∫_lo^hi density``, by Gauss–Legendre
    quadrature with enough nodes to resolve the oscillation at the largest |τ| asked.
    """

    density: Callable[[np.ndarray], np.ndarray]
    support: tuple[float, float]

    def __post_init__(self):
        if not callable(self.density):
            raise TypeError(f"density must be callable, got {type(self.density).__name__}")
        support = np.asarray(self.support) if np.ndim(self.support) == 1 else None
        if support is None or support.shape != (2,) or support.dtype.kind not in "iuf":
            raise ValueError(f"support must be a pair (lo, hi) of real numbers, got {self.support!r}")
        lo, hi = (float(v) for v in support)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(
                f"support must be a finite interval (lo, hi) with lo < hi, got {self.support!r}"
            )
        object.__setattr__(self, "support", (lo, hi))

    def kernel(self, tau):
        tau = _lags(tau)
        lo, hi = self.support
        # Gauss–Legendre resolves e^{2πiξτ} on [lo, hi] once n exceeds ~π(hi-lo)|τ|/2.
        reach = (hi - lo) * (float(np.abs(tau).max()) if tau.size else 0.0)
        n = 24 + 3 * reach if math.isfinite(reach) else math.inf
        if n > MAX_QUADRATURE_NODES:
            raise ValueError(
                f"tau must satisfy (hi - lo) * max|tau| <= {(MAX_QUADRATURE_NODES - 24) / 3:.0f} "
                f"for this PowerSpectrum (the quadrature would need {n:.3g} nodes, more than "
                f"{MAX_QUADRATURE_NODES}); got support width {hi - lo:.3g} and max|tau| "
                f"{reach / (hi - lo):.3g}: narrow the support or the window T"
            )
        n = int(n)
        if tau.size * n > MAX_KERNEL_TERMS:
            raise ValueError(
                f"tau has {tau.size} lags, which with {n} quadrature nodes exceeds the "
                f"{MAX_KERNEL_TERMS:.3g} complex exponentials PowerSpectrum.kernel evaluates "
                "per call; evaluate fewer lags or narrow the support"
            )
        x, w = np.polynomial.legendre.leggauss(n)
        xi, w = lo + (x + 1) * (hi - lo) / 2, w * (hi - lo) / 2
        dens = np.asarray(self.density(xi), dtype=np.float64)
        if dens.shape != xi.shape or not np.all(np.isfinite(dens)) or np.any(dens < 0):
            raise ValueError("density must return finite non-negative values, one per frequency")
        if not w @ dens > 0:
            raise ValueError("density must be positive somewhere on the support, got zeros")
        w = w * dens / (w @ dens)
        flat = tau.reshape(-1)
        out = np.empty(flat.shape, dtype=np.complex128)
        step = max(1, _CHUNK_ELEMENTS // n)  # bounded memory: [step, n] per block
        for i in range(0, flat.size, step):
            out[i : i + step] = np.exp(2j * np.pi * flat[i : i + step, None] * xi) @ w
        return _maybe_real(out.reshape(tau.shape))

    def frequency_scale(self) -> float:
        return float(max(abs(self.support[0]), abs(self.support[1])))


MAX_NODES = 3000  # quadrature cap of statistical_dimension's default (dense eigenvalues)
MAX_EXPLICIT_NODES = 2**13  # n_nodes given explicitly: an 8192² float64 matrix is 512 MiB
MAX_QUADRATURE_NODES = 4096  # PowerSpectrum: leggauss(n) builds an n x n companion matrix
MAX_KERNEL_TERMS = 2**32  # PowerSpectrum: lags x nodes per kernel call (about a minute)
MAX_SAMPLES = 2**14  # reconstruct_signal: the m x m system (2 GiB in float64, 4 in complex)
MAX_DRAWS = 2**27  # sample_universal: 1 GiB per float64 array
_CHUNK_ELEMENTS = 2**22  # block size of chunked evaluations (64 MiB of complex128)

SPECTRA = (
    Bandlimited,
    Multiband,
    SparseFrequencies,
    GaussianSpectrum,
    MaternSpectrum,
    PowerSpectrum,
)


def _lags(tau) -> np.ndarray:
    tau = np.asarray(tau, dtype=np.float64)
    if not np.all(np.isfinite(tau)):
        raise ValueError("tau must be finite, found NaN or infinite values")
    return tau


_HUGE = 1e300  # beyond, π·x overflows: |sinc x| < 1e-300 is 0, and no phase is defined


def _sinc(x: np.ndarray) -> np.ndarray:
    """``sinc`` of an argument that may be huge or have overflowed to ±inf (limit 0)."""
    small = np.abs(x) <= _HUGE
    return np.where(small, np.sinc(np.where(small, x, 0.0)), 0.0)


def _phase(cycles: np.ndarray) -> np.ndarray:
    """``exp(2πi cycles)``; raises when ``frequency · τ`` is beyond 1e300 (or overflowed)."""
    if not np.all(np.abs(cycles) <= _HUGE):
        raise ValueError(
            "tau must keep frequency * tau within the float64 range (|f tau| <= 1e300), got "
            "a larger product"
        )
    return np.exp(2j * np.pi * cycles)


def _maybe_real(k: np.ndarray) -> np.ndarray:
    """Drop a numerically zero imaginary part (symmetric spectra give real kernels)."""
    if np.iscomplexobj(k) and np.abs(k.imag).max(initial=0.0) <= 1e-12 * max(
        1.0, np.abs(k).max(initial=0.0)
    ):
        return k.real
    return k


def _check_spectrum(spectrum):
    if not isinstance(spectrum, SPECTRA):
        names = ", ".join(c.__name__ for c in SPECTRA)
        raise TypeError(f"spectrum must be one of ({names}), got {type(spectrum).__name__}")
    return spectrum


# --- statistical dimension and the universal density ---------------------------------


def statistical_dimension(
    spectrum, T: float, *, regularization: float = 1e-6, n_nodes: int | None = None
) -> float:
    """Statistical dimension ``s_λ = tr(𝒦(𝒦 + λI)^{-1})`` of a spectrum on [0, T].

    ``𝒦`` (docs/recovery.md) is discretized by Gauss–Legendre quadrature (Nyström
    method) and ``λ = regularization · k(0)``.

    Parameters
    ----------
    spectrum : one of the spectrum classes of this module
    T : float > 0
    regularization : float > 0
    n_nodes : int, optional
        Quadrature nodes; default ``256 + 16 · T · frequency_scale``, capped at 3000
        with a warning (dense eigenvalues of an n_nodes × n_nodes matrix); at most
        ``MAX_EXPLICIT_NODES = 8192`` when given.

    Returns
    -------
    float
    """
    _check_spectrum(spectrum)
    T = check_float("T", T, min=0.0, min_exclusive=True)
    regularization = check_float("regularization", regularization, min=0.0, min_exclusive=True)
    if n_nodes is None:
        wanted = 256 + int(16 * T * spectrum.frequency_scale())
        if wanted > MAX_NODES:
            warnings.warn(
                f"statistical_dimension: T * frequency scale = {T * spectrum.frequency_scale():.3g} "
                f"needs ~{wanted} quadrature nodes, capped at {MAX_NODES}: s_λ (and the default "
                "sample count) may be under-estimated; pass n_nodes or n_samples explicitly",
                UserWarning,
                stacklevel=2,
            )
        n_nodes = min(MAX_NODES, wanted)
    check_int("n_nodes", n_nodes, min=1, max=MAX_EXPLICIT_NODES)
    x, w = np.polynomial.legendre.leggauss(n_nodes)
    t, w = (x + 1) * T / 2, w / 2  # weights of the probability measure dt / T
    sw = np.sqrt(w)
    M = sw[:, None] * spectrum.kernel(t[:, None] - t[None, :]) * sw[None, :]
    evals = np.clip(scipy.linalg.eigvalsh(M), 0.0, None)
    lam = regularization * float(np.real(spectrum.kernel(np.zeros(1))[0]))
    return float((evals / (evals + lam)).sum())


MAX_STATISTICAL_DIMENSION = 1e15  # beyond, no sample count or density is representable
MIN_WINDOW = 1e-280  # the density scales as 1/T: below, it overflows near the ends


def _edge_cutoff(s: float) -> float:
    return min(0.25, (1.0 / max(s, 1.0)) ** 2)


def _check_window(T: float, s: float) -> tuple[float, float]:
    T = check_float("T", T, min=MIN_WINDOW)
    s = check_float("s", s, min=0.0, min_exclusive=True, max=MAX_STATISTICAL_DIMENSION)
    return T, s


def universal_density(t, T: float, s: float) -> np.ndarray:
    """The universal sampling density on [0, T] for statistical dimension s.

    ``p(t) = 1 / (2 (1 + ln(1/(2δ))) max(min(t, T-t), δT))`` with ``δ = min(1/4, 1/s²)``;
    it integrates to 1 on [0, T] and is the same for every spectrum of statistical
    dimension s (docs/recovery.md).

    ``T >= 1e-280`` (the density scales as 1/T) and ``0 < s <= 1e15``; t without NaN.

    Returns
    -------
    float64 ndarray shaped like t (0 outside [0, T])
    """
    T, s = _check_window(T, s)
    t = np.asarray(t, dtype=np.float64)
    if np.isnan(t).any():
        raise ValueError("t must not contain NaN")
    delta = _edge_cutoff(s)
    dist = np.maximum(np.minimum(t, T - t), delta * T)
    p = 1.0 / (2.0 * (1.0 + math.log(1.0 / (2.0 * delta))) * dist)
    return np.where((t >= 0) & (t <= T), p, 0.0)


def sample_universal(n: int, T: float, s: float, random_state=None) -> np.ndarray:
    """Draw n points from :func:`universal_density` by inverting its CDF.

    Each half of [0, T] has mass 1/2; within ``[0, T/2]`` the point is uniform on
    ``[0, δT]`` with probability ``1/(1+L)`` and log-uniform on ``[δT, T/2]``
    otherwise, ``L = ln(1/(2δ))``; the right half is the mirror image.

    ``random_state``: None, an int or a ``numpy.random.RandomState``
    (scikit-learn's meaning). ``n`` at most ``MAX_DRAWS = 2**27``; ``T >= 1e-280``
    and ``0 < s <= 1e15``. Returns float64 [n] in [0, T].
    """
    check_int("n", n, min=1, max=MAX_DRAWS)
    T, s = _check_window(T, s)
    rng = check_random_state(random_state)
    delta = _edge_cutoff(s)
    L = math.log(1.0 / (2.0 * delta))
    u = rng.uniform(size=n)
    flat = rng.uniform(size=n) < 1.0 / (1.0 + L)
    dist = np.where(flat, u * delta * T, delta * T * np.exp(u * L))
    return np.where(rng.uniform(size=n) < 0.5, dist, T - dist)


def default_signal_samples(s: float) -> int:
    """Default sample count ``ceil(4 s max(1, ln s))`` for statistical dimension s.

    The paper's Theorem 1 gives ``O(s log² s)`` samples from the universal density;
    on bandlimited, multiband, sparse and Gaussian-process classes (benchmarks/recovery.py)
    ``4 s ln s`` already reaches the regularization / noise floor.
    """
    s = max(check_float("s", s, min=0.0, max=MAX_STATISTICAL_DIMENSION), 1.0)
    return math.ceil(4.0 * s * max(1.0, math.log(s)))


# --- reconstruction ------------------------------------------------------------------


class ReconstructedSignal:
    """A signal recovered by weighted kernel ridge regression: ``x̃(t) = Σ_j a_j k(t - t_j)``.

    Attributes
    ----------
    spectrum, T
    times : float64 ndarray (m,), sample times t_j
    weights : float64 ndarray (m,), importance weights ``v_j = 1/(m T p(t_j))``
    values : ndarray (m,), observed samples
    coef : ndarray (m,), the a_j
    statistical_dimension : float, s_λ used to set the density and the default count
    """

    def __init__(self, spectrum, T, times, weights, values, coef, s):
        self.spectrum = spectrum
        self.T = T
        self.times = times
        self.weights = weights
        self.values = values
        self.coef = coef
        self.statistical_dimension = s

    def __call__(self, t) -> np.ndarray:
        """Evaluate the reconstruction at times t (any shape); real for real kernels and data."""
        t = np.asarray(t, dtype=np.float64)
        if not np.all(np.isfinite(t)):
            raise ValueError("t must be finite, found NaN or infinite values")
        flat = t.reshape(-1)
        out = np.empty(flat.shape, dtype=np.result_type(self.coef, self.spectrum.kernel(0.0)))
        step = max(1, _CHUNK_ELEMENTS // self.times.size)  # bounded memory: [step, m] blocks
        for i in range(0, flat.size, step):
            out[i : i + step] = self.spectrum.kernel(flat[i : i + step, None] - self.times) @ self.coef
        return out.reshape(t.shape)


def reconstruct_signal(
    samples_fn: Callable[[np.ndarray], np.ndarray],
    T: float,
    spectrum,
    n_samples: int | None = None,
    *,
    regularization: float = 1e-6,
    sampling: str = "mixture",
    random_state=None,
) -> ReconstructedSignal:
    """Reconstruct a signal on [0, T] with a known power spectrum from few samples.

    Samples t_j from the universal density (mixed half/half with uniform by default),
    reads the signal there once, and solves the weighted kernel ridge regression of
    docs/recovery.md. Covers bandlimited (:class:`Bandlimited`), multiband
    (:class:`Multiband`), Fourier-sparse with known frequencies
    (:class:`SparseFrequencies`), and 1-D Gaussian-process kriging
    (:class:`GaussianSpectrum`, :class:`MaternSpectrum`, :class:`PowerSpectrum`).

    Parameters
    ----------
    samples_fn : callable
        Maps a float64 array of m times in [0, T] to m (real or complex) samples,
        possibly noisy.
    T : float > 0
        Length of the observation window.
    spectrum : spectrum object
        The allowed power spectrum μ.
    n_samples : int, optional
        Default :func:`default_signal_samples`, ``ceil(4 s_λ ln s_λ)`` (the paper's
        Theorem 1 bound is ``O(s_λ log² s_λ)``). At most ``MAX_SAMPLES = 2**14``
        (the dense m × m system).
    regularization : float > 0, default=1e-6
        Ridge λ relative to the signal power k(0); set it to about the
        noise-to-signal power ratio for noisy samples. The guarantee (paper, Thm. 1):
        ``‖x̃ - x‖_T² ≤ C (‖noise‖_T² + λ ‖x‖_μ²)`` with high probability.
    sampling : {"mixture", "universal", "uniform"}, default="mixture"
        "universal" is the paper's density :func:`universal_density`. "mixture" (the
        default) draws each sample from it or uniformly with probability 1/2 each: it
        is still spectrum-independent and keeps the universal guarantee (its density
        is at least half the universal one), and it never needs more than twice the
        samples of uniform sampling in the bulk of [0, T], where the pure universal
        density spends a log factor fewer samples (wide bands at moderate λ; see
        BENCHMARKS.md). "uniform" is the baseline.
    random_state : int, numpy.random.RandomState or None
        Source of the sample times, scikit-learn's meaning (None: numpy's global
        RandomState; an int: a new ``RandomState(int)``; a RandomState: used as is).

    Returns
    -------
    ReconstructedSignal
        Callable on times.

    References
    ----------
    H. Avron, M. Kapralov, C. Musco, C. Musco, A. Velingker, A. Zandieh. A Universal
    Sampling Method for Reconstructing Signals with Simple Fourier Transforms.
    STOC 2019, arXiv 1812.08723.
    """
    if not callable(samples_fn):
        raise TypeError(
            f"samples_fn must be callable (times (m,) -> (m,)), got {type(samples_fn).__name__}"
        )
    T = check_float("T", T, min=0.0, min_exclusive=True)
    _check_spectrum(spectrum)
    regularization = check_float("regularization", regularization, min=0.0, min_exclusive=True)
    check_choice("sampling", sampling, ("universal", "uniform", "mixture"))
    rng = check_random_state(random_state)
    s = statistical_dimension(spectrum, T, regularization=regularization)
    if n_samples is None:
        n_samples = default_signal_samples(s)
    check_int("n_samples", n_samples, min=1, max=MAX_SAMPLES)
    if sampling == "uniform":
        times = rng.uniform(0.0, T, size=n_samples)
    else:
        times = sample_universal(n_samples, T, s, rng)
    if sampling == "mixture":
        from_uniform = rng.uniform(size=n_samples) < 0.5
        times[from_uniform] = rng.uniform(0.0, T, size=int(from_uniform.sum()))
    density = {
        "universal": lambda: universal_density(times, T, s),
        "uniform": lambda: np.full(n_samples, 1.0 / T),
        "mixture": lambda: 0.5 / T + 0.5 * universal_density(times, T, s),
    }[sampling]()
    weights = 1.0 / (n_samples * T * density)
    values = _read_samples(samples_fn, times)
    sw = np.sqrt(weights)
    A = sw[:, None] * spectrum.kernel(times[:, None] - times[None, :]) * sw[None, :]
    lam = regularization * float(np.real(spectrum.kernel(np.zeros(1))[0]))
    A[np.diag_indices_from(A)] += lam
    coef = sw * scipy.linalg.solve(A, sw * values, assume_a="her")
    return ReconstructedSignal(spectrum, T, times, weights, values, coef, s)


def _read_samples(samples_fn, times: np.ndarray) -> np.ndarray:
    values = np.asarray(samples_fn(times.copy()))
    if values.shape != times.shape:
        raise ValueError(
            f"samples_fn must return one value per time, shape ({len(times)},), got shape {values.shape}"
        )
    if not (np.issubdtype(values.dtype, np.number) and np.all(np.isfinite(values))):
        raise ValueError(
            "samples_fn must return finite numbers, found NaN, infinite or non-numeric values"
        )
    return values.astype(np.complex128 if np.iscomplexobj(values) else np.float64)
