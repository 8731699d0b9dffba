"""Weighted random binning: sparse features for the Gaussian, Matérn and Laplace kernels.

Each of ``n_components`` randomly shifted grids of random cell widths gives a
point ``x`` [d] one non-zero feature, at its cell, of value
``prod_j f_k(t_j) / sqrt(n_components)`` (``t_j in [0, 1)`` the relative position
in the cell along coordinate ``j``; ``f_k(t) = c_k (t (1 - t))^k``, ``f = 1`` for
``"laplacian"``). ``transform`` returns CSR ``(n_samples, n_features_out_)``,
float32 for float32 input, with ``Z @ Z.T`` unbiased for the induced kernel
:func:`weighted_binning_kernel`:

- ``"laplacian"``: exactly ``exp(-||x - y||_1 / length_scale)``;
- ``"gaussian"``: within 0.0068 (k = 1) to 0.000057 (k = 6) per coordinate of
  ``exp(-||x - y||^2 / (2 length_scale^2))`` (0.00151 at the default k = 2);
  C^{2k} at 0, Matérn-(k + 1/2) smoothness;
- ``"matern"``: a Gaussian scale mixture close to the Matérn(nu) kernel, of
  smoothness ``min(nu, k + 1/2)``.

Guarantee: with enough grids, ``(1 - eps)(K + lambda I) <= Z Z^T + lambda I <=
(1 + eps)(K + lambda I)`` (the form of arXiv 2003.09756's theorem; here by
matrix Bernstein, constants not worked out). One grid's estimate of ``k(x, x)``
has relative variance ``E[f_k^4]^d - 1``: the smooth weightings need many grids
beyond ~8 input dimensions. The weighting is this library's own construction,
not the paper's (only its abstract was consulted).

Theory, provenance, the fitted width table, smoothness and what is verified:
docs/weighted_random_binning.md.
"""

from __future__ import annotations

import functools
import math
import warnings
from fractions import Fraction

import numpy as np
import scipy.sparse as sp
import torch
from scipy.special import gammaincc, gammaln
from sklearn.utils.validation import check_is_fitted
from torch import nn

from kernelsketch._checks import check_choice, check_float, check_int, check_tensor
from kernelsketch.distributed.dask import is_dask_array
from kernelsketch.distributed.dask import transform as dask_transform
from kernelsketch.features._base import (
    RandomFeaturesTransformer,
    check_allocation,
    torch_generator_from_random_state,
)

__all__ = [
    "MAX_WEIGHT_ORDER",
    "WeightedBinningMap",
    "WeightedRandomBinning",
    "weight_fourth_moment",
    "weighted_binning_kernel",
]

KERNELS = ("gaussian", "matern", "laplacian")

# Smooth weightings f_k(t) = c_k (t (1 - t))^k, k = weight_order: width multiplier and
# Gamma shape of the per-coordinate width jitter, (W_k, a_k). For each k, W_k (3 decimals)
# and the integer a_k > 4k + 1 minimise sup_u |E_g[A_k(u / (W_k g))] - exp(-u^2 / 2)| on a
# 16001-point grid of u in [0, 8] (scipy's bounded scalar search in W for each integer a,
# run once offline); k = 2 keeps the constants this module shipped with (3.577, 35),
# which are that fit's optimum. Sup distances: docs/weighted_random_binning.md.
_WIDTH_TABLE = {
    1: (2.993, 37.0),
    2: (3.577, 35.0),
    3: (4.089, 41.0),
    4: (4.547, 48.0),
    5: (4.964, 55.0),
    6: (5.350, 63.0),
}
MAX_WEIGHT_ORDER = max(_WIDTH_TABLE)
# Trapezoid nodes (in log tau) for the Matérn scale mixture in weighted_binning_kernel.
_MATERN_NODES = 256


class WeightedBinningMap(nn.Module):
    """Torch map ``x -> (cells, weights)`` for ``n_grids`` randomly shifted weighted grids.

    Parameters
    ----------
    widths : Tensor [n_grids, d]
        Cell widths per grid and coordinate (> 0).
    shifts : Tensor [n_grids, d]
        Grid offsets, uniform in ``[0, width)``.
    weight_order : int >= 0
        ``k`` of the weight function ``f_k(t) = c_k (t (1 - t))^k`` with
        ``int_0^1 f_k^2 = 1``: ``0`` is ``f = 1`` (plain binning), ``2`` is
        ``sqrt(630) t^2 (1 - t)^2``.

    ``forward(x [..., d])`` returns ``cells`` (int64 ``[..., n_grids, d]``, the cell
    index per coordinate) and ``weights`` (``[..., n_grids]`` in the input dtype,
    ``prod_j f_k(t_j) / sqrt(n_grids)``), so that
    ``sum_g weights(x)_g weights(y)_g [cells(x)_g == cells(y)_g]`` estimates the
    induced kernel without bias. Works on any device after ``.to(device)``.
    """

    def __init__(self, widths: torch.Tensor, shifts: torch.Tensor, weight_order: int):
        super().__init__()
        self.register_buffer("widths", widths)
        self.register_buffer("shifts", shifts)
        self.weight_order = weight_order
        self.weight_scale = math.sqrt(_weight_norm_sq(weight_order))
        self.n_grids = widths.shape[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_tensor("x", x)
        if x.dim() == 0 or x.shape[-1] != self.widths.shape[1]:
            raise ValueError(f"x must have {self.widths.shape[1]} features in its last "
                             f"dimension, got shape {list(x.shape)}")
        dtype = x.dtype
        work = torch.float64 if dtype == torch.float64 else torch.float32
        pos = (x.to(work)[..., None, :] - self.shifts.to(work)) / self.widths.to(work)
        cells = torch.floor(pos)
        if self.weight_order == 0:
            weights = torch.ones(pos.shape[:-1], dtype=work, device=x.device)
        else:
            t = pos - cells
            weights = (self.weight_scale * (t * (1.0 - t)) ** self.weight_order).prod(-1)
        return cells.to(torch.int64), (weights / math.sqrt(self.n_grids)).to(dtype)


@functools.cache
def _weight_norm_sq(k: int) -> int:
    """``c_k^2 = 1 / Beta(2k + 1, 2k + 1) = (4k + 1)! / (2k)!^2`` (an integer)."""
    return math.factorial(4 * k + 1) // math.factorial(2 * k) ** 2


def weight_fourth_moment(weight_order: int) -> float:
    """``E[f_k(t)^4]`` for ``t ~ U(0, 1)``, exact: ``c_k^4 Beta(4k + 1, 4k + 1)``.

    One grid's estimate of ``k(x, x)`` is ``prod_j f_k(t_j)^2`` with relative variance
    ``E[f_k^4]^d - 1`` on ``d`` coordinates. Values: 1.43, 1.81, 2.13, 2.41, 2.66, 2.89
    (k = 1 .. 6, the orders :class:`WeightedRandomBinning` takes; the Laplace weighting,
    ``f = 1``, has 1).
    """
    k = check_int("weight_order", weight_order, min=1, max=MAX_WEIGHT_ORDER)
    return float(_weight_norm_sq(k) ** 2 * Fraction(math.factorial(4 * k) ** 2,
                                                  math.factorial(8 * k + 1)))


@functools.cache
def _autocorr_exact(k: int) -> tuple[Fraction, ...]:
    """Coefficients of ``A_k(d) = int_0^{1-d} f_k(t) f_k(t + d) dt`` for ``d^0 .. d^{4k+1}``.

    Exact rational arithmetic: with ``p(t) = (t (1 - t))^k = sum_i p_i t^i``,
    ``p(t) p(t + d) = sum p_i p_j C(j, a) t^{i+a} d^{j-a}``, and
    ``int_0^{1-d} t^m dt = (1 - d)^{m+1} / (m + 1)`` is expanded binomially;
    the result is divided by ``A_k(0) = int p^2 = 1 / c_k^2``.
    """
    p = [Fraction(0)] * (2 * k + 1)
    for i in range(k + 1):
        p[k + i] = Fraction((-1) ** i * math.comb(k, i))
    coef = [Fraction(0)] * (4 * k + 2)
    for i, pi in enumerate(p):
        for j, pj in enumerate(p):
            if pi == 0 or pj == 0:
                continue
            for a in range(j + 1):
                m, b = i + a, j - a
                c = pi * pj * math.comb(j, a) / (m + 1)
                for r in range(m + 2):
                    coef[b + r] += c * (-1) ** r * math.comb(m + 1, r)
    return tuple(c / coef[0] for c in coef)


@functools.cache
def _autocorr(k: int) -> tuple[float, ...]:
    """Float64 coefficients of ``A_k`` (see :func:`_autocorr_exact`)."""
    return tuple(float(c) for c in _autocorr_exact(k))


def _smooth_1d(delta: np.ndarray, k: int) -> np.ndarray:
    """E_g[A_k(|delta| / (W_k g))], g ~ Gamma(a_k, 1/a_k): closed form term by term.

    With w ~ Gamma(a, scale th): E[w^-j 1{w > u}] = th^-j Gamma(a-j)/Gamma(a) Q(a-j, u/th),
    valid for every power j <= 4k + 1 < a_k of A_k.
    """
    u = np.abs(delta)
    width, a = _WIDTH_TABLE[k]
    th = width / a
    out = np.zeros_like(u)
    for j, c in enumerate(_autocorr(k)):
        if c != 0.0:
            moment = np.exp(gammaln(a - j) - gammaln(a) - j * np.log(th))
            out += c * u**j * moment * gammaincc(a - j, u / th)
    return out


def weighted_binning_kernel(
    X,
    Y=None,
    *,
    kernel: str = "gaussian",
    length_scale: float = 1.0,
    nu: float = 1.5,
    weight_order: int = 2,
) -> np.ndarray:
    """Exact kernel induced by :class:`WeightedRandomBinning` (the test oracle).

    Parameters
    ----------
    X : array-like [n, d]; Y : array-like [m, d], default X
    kernel : {"gaussian", "matern", "laplacian"}
    length_scale : float > 0
    nu : float > 0
        Matérn order (``kernel="matern"`` only).
    weight_order : int in [1, 6], default 2
        ``k`` of the weight function ``f_k(t) = c_k (t (1 - t))^k`` (ignored for
        ``"laplacian"``).

    Returns
    -------
    K : ndarray [n, m], float64
        ``laplacian``: ``exp(-||x - y||_1 / length_scale)``; ``gaussian``:
        ``prod_j k1((x_j - y_j) / length_scale)`` with ``k1 = E_g[A_k(|t| / (W_k g))]``
        within a sup distance of ``exp(-t^2/2)`` from 0.0068 (``k = 1``) to 0.000057
        (``k = 6``), 0.00151 for ``k = 2`` (docs/weighted_random_binning.md); ``matern``: ``E_tau[prod_j k1((x_j - y_j) / s)]`` with
        ``s^2 = length_scale^2 tau / nu``, ``tau ~ Gamma(nu, 1)`` (trapezoid rule in
        ``log tau``, 256 nodes), close to the Matérn kernel of order ``nu``.
    """
    check_choice("kernel", kernel, KERNELS)
    length_scale = check_float("length_scale", length_scale, min=0.0, min_exclusive=True)
    nu = check_float("nu", nu, min=0.0, min_exclusive=True)
    k = check_int("weight_order", weight_order, min=1, max=MAX_WEIGHT_ORDER)
    X = np.asarray(X, dtype=np.float64)
    Y = X if Y is None else np.asarray(Y, dtype=np.float64)
    diff = (X[:, None, :] - Y[None, :, :]) / length_scale
    if kernel == "laplacian":
        return np.exp(-np.abs(diff).sum(-1))
    if kernel == "gaussian":
        return _smooth_1d(diff, k).prod(-1)
    # tau = e^z makes the integrand smooth and fast-decaying on both sides, so the
    # trapezoid rule in z converges geometrically (also for nu < 1).
    z_lo = (math.log(1e-12) + math.lgamma(nu + 1.0)) / nu
    z = np.linspace(z_lo, math.log(60.0 + 10.0 * nu), _MATERN_NODES)
    tau = np.exp(z)
    weights = np.exp(nu * z - tau - math.lgamma(nu))
    weights = weights / weights.sum()
    K = np.zeros(diff.shape[:2])
    for t, wt in zip(tau, weights):
        K += wt * _smooth_1d(diff * math.sqrt(nu / t), k).prod(-1)
    return K


def _hash_cells(cells: np.ndarray, multipliers: np.ndarray) -> np.ndarray:
    """One int64 key per (row, grid) cell: random odd multipliers, arithmetic mod 2^64.

    ``cells`` is int64 ``[n, R, d]``; ``multipliers`` uint64 ``[d + 1]`` (the last one
    mixes in the grid index, so equal cells of different grids get different keys).
    """
    u = cells.view(np.uint64)  # two's complement reinterpretation, no copy
    keys = (u * multipliers[:-1]).sum(-1, dtype=np.uint64)
    keys += np.arange(cells.shape[1], dtype=np.uint64) * multipliers[-1]
    return keys.view(np.int64)


# Bytes of temporaries per chunk of rows when binning ([rows, n_grids, d] positions, cells
# and keys: about 40 bytes per entry).
_CHUNK_BYTES = 1 << 26
# Largest n_components accepted (grids above cannot be stored or evaluated).
_MAX_COMPONENTS = 1 << 24


class WeightedRandomBinning(RandomFeaturesTransformer):
    """Sparse weighted random binning features for the Gaussian, Matérn and Laplace kernels.

    Each of ``n_components`` random grids contributes one non-zero per row:
    ``transform`` returns a CSR matrix ``Z`` with ``Z @ Z.T`` an unbiased
    estimate of the induced kernel matrix (:func:`weighted_binning_kernel`),
    which is the Laplace kernel exactly, or a smooth kernel within 0.0068 (k = 1) to
    0.000057 (k = 6) per coordinate of the Gaussian (0.00151 at the default k = 2), resp.
    close to the Matérn(nu) kernel. Use it with
    :class:`kernelsketch.features.KernelRidge` (CG on the sparse features) for
    kernel ridge regression in ``O(n_components * n)`` memory.

    With ``weight_order = k`` the ``"gaussian"`` kernel is C^{2k} at 0 (spectral
    density ``~ |omega|^-(2k+2)``, Matérn-(k + 1/2)-like smoothness): any finite
    smoothness, close to the Gaussian in value, never infinitely smooth. The weight
    function is this library's own (the idea of weighting is arXiv 2003.09756's):
    docs/weighted_random_binning.md.

    Parameters
    ----------
    n_components : int, default 100
        Number of independent grids (non-zeros per row). The number of output
        columns is the number of distinct cells occupied by the training data.
    kernel : {"gaussian", "matern", "laplacian"}, default "gaussian"
    length_scale : float, default 1.0
        ``exp(-||x-y||^2 / (2 length_scale^2))``, Matérn's ``length_scale`` as in
        ``sklearn.gaussian_process.kernels.Matern``, or ``exp(-||x-y||_1 / length_scale)``.
    nu : float, default 1.5
        Matérn order (``kernel="matern"``); larger is smoother. The induced kernel's
        smoothness is ``min(nu, weight_order + 1/2)``.
    weight_order : int in [1, 6], default 2
        ``k`` of the cell weight ``f_k(t) = c_k (t (1 - t))^k`` (ignored for
        ``"laplacian"``). Larger is smoother (Matérn-(k + 1/2)-like, closer to the
        Gaussian in value) but costs variance: one grid's estimate of ``k(x, x)`` has
        relative variance ``E[f_k^4]^d - 1`` with ``E[f_k^4]`` = 1.43, 1.81, 2.13, 2.41,
        2.66, 2.89 for k = 1..6 (:func:`weight_fourth_moment`). Use
        ``weight_order >= nu - 1/2`` for a Matérn kernel of order ``nu``.
    random_state : int, RandomState or None

    Attributes
    ----------
    feature_map_ : WeightedBinningMap
        Torch map to cells and weights (the binning itself; works on GPU).
    n_features_out_ : int
        Number of columns (cells seen in ``fit``).

    References
    ----------
    Kapralov, Nouri, Razenshteyn, Velingker, Zandieh, AISTATS 2020 (arXiv 2003.09756):
    weighted random binning and its spectral guarantee (the weighting here is ours).
    """

    def __init__(
        self,
        *,
        n_components: int = 100,
        kernel: str = "gaussian",
        length_scale: float = 1.0,
        nu: float = 1.5,
        weight_order: int = 2,
        random_state=None,
    ):
        self.n_components = n_components
        self.kernel = kernel
        self.length_scale = length_scale
        self.nu = nu
        self.weight_order = weight_order
        self.random_state = random_state

    def _check_params(self, n_features: int) -> None:
        check_int("n_components", self.n_components, min=1, max=_MAX_COMPONENTS)
        check_choice("kernel", self.kernel, KERNELS)
        check_float("length_scale", self.length_scale, min=0.0, min_exclusive=True)
        check_float("nu", self.nu, min=0.0, min_exclusive=True)
        check_int("weight_order", self.weight_order, min=1, max=MAX_WEIGHT_ORDER)
        check_allocation(16.0 * self.n_components * n_features,
                         f"the (n_components, n_features) = ({self.n_components}, {n_features}) "
                         "grid widths and shifts", "use fewer n_components")
        self._warn_if_high_variance(n_features)

    def _warn_if_high_variance(self, d: int) -> None:
        """Warn when one grid's estimate of ``k(x, x)`` (relative variance ``E[f_k^4]^d - 1``)
        leaves a relative error above 0.5 with ``n_components`` grids."""
        if self.kernel == "laplacian":
            self.expected_diagonal_error_ = 0.0
            return
        log_var = d * math.log(weight_fourth_moment(self.weight_order))
        rel = math.exp(0.5 * (min(log_var, 700.0) - math.log(self.n_components)))
        self.expected_diagonal_error_ = rel
        if rel > 0.5:
            needed = math.exp(log_var) / 0.25 if log_var < 700 else math.inf
            warnings.warn(
                f"WeightedRandomBinning(kernel={self.kernel!r}, weight_order="
                f"{self.weight_order}) in d={d}: one grid's estimate of k(x, x) has relative "
                f"variance E[f^4]^d - 1 = {math.expm1(min(log_var, 700.0)):.3g}, so "
                f"{self.n_components} grids leave a relative error of about {rel:.3g} (most "
                f"rows get near-zero features; {needed:.3g} grids would give 0.5); use "
                "kernel='laplacian' (bounded variance in any d), weight_order=1, or "
                "GegenbauerFeatures / RBFSampler for a Gaussian kernel in this dimension",
                UserWarning, stacklevel=4)

    def _make_feature_map(self, n_features, generator, X):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        R, d, ell = self.n_components, n_features, float(self.length_scale)
        if self.kernel == "laplacian":
            widths = rng.gamma(2.0, ell, size=(R, d))
            order = 0
        else:
            order = self.weight_order
            width, shape = _WIDTH_TABLE[order]
            scale = np.full((R, 1), ell)
            if self.kernel == "matern":
                scale = ell * np.sqrt(rng.gamma(self.nu, 1.0, size=(R, 1)) / self.nu)
            jitter = rng.gamma(shape, 1.0 / shape, size=(R, d))
            widths = width * scale * jitter
        shifts = rng.uniform(size=(R, d)) * widths
        # Key multipliers: one per coordinate plus one for the grid index (odd, 64-bit).
        self._multipliers = rng.integers(0, 2**63, size=d + 1, dtype=np.uint64) * 2 + 1
        return WeightedBinningMap(torch.from_numpy(widths), torch.from_numpy(shifts), order)

    def _cells_and_weights(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys, weights = [], []
        with torch.no_grad(), np.errstate(over="ignore"):
            step = max(1, _CHUNK_BYTES // (40 * self.n_components * max(X.shape[1], 1)))
            for start in range(0, X.shape[0], step):
                cells, w = self.feature_map_(torch.from_numpy(X[start:start + step]))
                keys.append(_hash_cells(cells.numpy(), self._multipliers))
                weights.append(w.numpy())
        return np.concatenate(keys), np.concatenate(weights)

    def _csr(self, keys: np.ndarray, weights: np.ndarray, dtype) -> sp.csr_matrix:
        n, R = keys.shape
        pos = np.searchsorted(self.cell_keys_, keys.ravel()).clip(max=self.cell_keys_.size - 1)
        seen = self.cell_keys_[pos] == keys.ravel()
        rows = np.repeat(np.arange(n), R)[seen]
        return sp.csr_matrix(
            (weights.ravel()[seen], (rows, pos[seen])),
            shape=(n, self.n_features_out_),
            dtype=dtype,
        )

    def fit(self, X, y=None):
        """Draw the grids and index the cells occupied by ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored

        Returns
        -------
        self
        """
        self._fit(X)
        return self

    def _fit(self, X):
        X = self._validate_X(X, reset=True)
        self._check_params(X.shape[1])
        generator = torch_generator_from_random_state(self.random_state)
        self.feature_map_ = self._make_feature_map(X.shape[1], generator, None)
        keys, weights = self._cells_and_weights(X)
        self.cell_keys_ = np.unique(keys)
        self._n_features_out = self.n_features_out_ = int(self.cell_keys_.size)
        return X, keys, weights

    def fit_transform(self, X, y=None):
        """Fit on ``X`` and return its features (bins ``X`` once).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored

        Returns
        -------
        Z : scipy.sparse.csr_matrix of shape (n_samples, n_features_out_)
        """
        X, keys, weights = self._fit(X)
        return self._csr(keys, weights, X.dtype)

    def transform(self, X):
        """Sparse features of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        Z : scipy.sparse.csr_matrix of shape (n_samples, n_features_out_)
            At most ``n_components`` non-zeros per row; float32 for float32 input.
        """
        check_is_fitted(self, "cell_keys_")
        if is_dask_array(X):  # lazy, chunk by chunk (Dask array of CSR chunks)
            return dask_transform(self, X)
        X = self._validate_X(X, reset=False)
        keys, weights = self._cells_and_weights(X)
        return self._csr(keys, weights, X.dtype)
