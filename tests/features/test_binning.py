"""WeightedRandomBinning: the exact induced kernel (oracle) vs its targets, the exact
autocorrelation polynomials of the weightings and the smoothness they give, Monte Carlo
unbiasedness of the sparse features, spectral approximation, error falling with grids."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.integrate import quad
from scipy.special import beta as beta_fn
from scipy.special import erfcx, gammaln
from sklearn.gaussian_process.kernels import Matern
from sklearn.utils.estimator_checks import parametrize_with_checks

from kernelsketch.features.binning import (
    _WIDTH_TABLE,
    MAX_WEIGHT_ORDER,
    WeightedRandomBinning,
    _autocorr,
    _autocorr_exact,
    weight_fourth_moment,
    weighted_binning_kernel,
)

# Documented sup-norm distance of the 1-D induced kernel to exp(-t^2/2), per weight order.
SUP_TO_GAUSSIAN = {1: 0.0068, 2: 0.00151, 3: 0.00052, 4: 0.00023, 5: 0.000083, 6: 0.000057}


def _width_moment(k, j):
    """E[w^-j] for the width w = W_k g, g ~ Gamma(a_k, scale 1/a_k)."""
    W, a = _WIDTH_TABLE[k]
    return np.exp(gammaln(a - j) - gammaln(a)) * (a / W) ** j


def _spectral_density(k, omega):
    """Spectral density of the 1-D induced kernel, S(omega) = E_w[w hat_A(w omega)], with
    hat_A(v) = 2 Re int_0^1 A_k(d) e^{ivd} dd in closed form by repeated integration by parts
    (A_k is a polynomial on [0, 1]); the mean over w by the trapezoid rule on a fine grid."""
    W, a = _WIDTH_TABLE[k]
    poly = np.polynomial.Polynomial(_autocorr(k))
    g = np.linspace(0.05, 4.0, 40001)
    dens = np.exp((a - 1) * np.log(g) - a * g + a * np.log(a) - gammaln(a))
    v = W * g[None, :] * np.asarray(omega, dtype=float)[:, None]
    integral = np.zeros_like(v, dtype=complex)
    deriv = poly
    for m in range(poly.degree() + 1):
        integral += (-1) ** m * (deriv(1.0) * np.exp(1j * v) - deriv(0.0)) / (1j * v) ** (m + 1)
        deriv = deriv.deriv()
    return np.trapezoid(W * g * 2 * integral.real * dens, g, axis=-1)


def _spectral_eps(K, Kt, lam):
    """Smallest eps with (1-eps)(K+lam I) <= Kt+lam I <= (1+eps)(K+lam I)."""
    w, V = np.linalg.eigh(K + lam * np.eye(len(K)))
    inv_sqrt = (V / np.sqrt(w)) @ V.T
    ev = np.linalg.eigvalsh(inv_sqrt @ (Kt + lam * np.eye(len(K))) @ inv_sqrt)
    return max(ev.max() - 1.0, 1.0 - ev.min())


@parametrize_with_checks([WeightedRandomBinning(n_components=20, random_state=0)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_laplacian_oracle_is_exact_laplace_kernel(np_rng):
    rng = np_rng
    X, Y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3))
    K = weighted_binning_kernel(X, Y, kernel="laplacian", length_scale=0.7)
    ref = np.exp(-np.abs(X[:, None] - Y[None]).sum(-1) / 0.7)
    np.testing.assert_allclose(K, ref, rtol=1e-12)


def test_autocorrelation_order_2_is_the_original_table():
    # The table this module shipped with for sqrt(630) t^2 (1-t)^2 (default behaviour).
    assert _autocorr(2) == (1.0, 0.0, -6.0, 0.0, 21.0, -21.0, 0.0, 6.0, 0.0, -1.0)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_autocorrelation_polynomial_matches_quadrature(k, np_rng):
    # A_k(d) = int_0^{1-d} f_k(t) f_k(t + d) dt, f_k = (t(1-t))^k / sqrt(Beta(2k+1, 2k+1)).
    def f(t):
        return (t * (1 - t)) ** k / np.sqrt(beta_fn(2 * k + 1, 2 * k + 1))

    poly = np.polynomial.Polynomial(_autocorr(k))
    for d in np_rng.uniform(0, 1, size=6):
        ref = quad(lambda t, d: f(t) * f(t + d), 0.0, 1.0 - d, args=(d,), epsabs=1e-14)[0]
        assert abs(poly(d) - ref) <= 1e-11
    assert poly(0.0) == 1.0 and abs(poly(1.0)) <= 1e-12
    assert len(_autocorr(k)) == 4 * k + 2


@pytest.mark.parametrize("k", range(1, MAX_WEIGHT_ORDER + 1))
def test_autocorrelation_odd_part_starts_at_order_2k_plus_1(k):
    # f_k vanishes to order k at both cell ends: A_k is C^{2k} at 0 and its first odd
    # (non-smooth, |d|^{2k+1}) term is d^{2k+1}; that term sets the spectral tail.
    coef = _autocorr_exact(k)
    assert all(coef[j] == 0 for j in range(1, 2 * k + 1, 2))
    assert coef[2 * k + 1] != 0


def test_weight_fourth_moment_matches_quadrature():
    for k in range(1, MAX_WEIGHT_ORDER + 1):
        ref = quad(lambda t, k: (t * (1 - t)) ** (4 * k), 0, 1, args=(k,), epsrel=1e-13)[0]
        ref /= beta_fn(2 * k + 1, 2 * k + 1) ** 2
        assert weight_fourth_moment(k) == pytest.approx(ref, rel=1e-10)
    assert weight_fourth_moment(2) == pytest.approx(1.814, abs=1e-3)
    for bad in (0, MAX_WEIGHT_ORDER + 1):
        with pytest.raises(ValueError, match="weight_order must be"):
            weight_fourth_moment(bad)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_gaussian_oracle_within_documented_distance_of_gaussian(k, np_rng):
    rng = np_rng
    u = rng.uniform(0.0, 6.0, size=4000)
    k1 = weighted_binning_kernel(u[:, None], np.zeros((1, 1)), weight_order=k)[:, 0]
    assert np.abs(k1 - np.exp(-(u**2) / 2)).max() <= SUP_TO_GAUSSIAN[k]
    # Products of [0, 1]-valued factors: the d-dim error is at most d times the 1-D one.
    d = 3
    X, Y = rng.normal(size=(30, d)), rng.normal(size=(30, d))
    K = weighted_binning_kernel(X, Y, kernel="gaussian", length_scale=1.3, weight_order=k)
    ref = np.exp(-((X[:, None] - Y[None]) ** 2).sum(-1) / (2 * 1.3**2))
    assert np.abs(K - ref).max() <= SUP_TO_GAUSSIAN[k] * d
    np.testing.assert_allclose(np.diag(weighted_binning_kernel(X, weight_order=k)), 1.0)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_gaussian_oracle_small_distance_expansion(k):
    # E_w[A_k(d / w)] = sum_j c_j E[w^-j] d^j up to exponentially small terms (w > d almost
    # surely for small d): even powers up to d^{2k}, then the first odd term d^{2k+1}, so
    # the induced kernel is C^{2k}, not C^{2k+1}, at 0 (Matérn-(k+1/2)-like smoothness).
    c = _autocorr(k)
    d = np.array([0.1, 0.05, 0.025])
    k1 = weighted_binning_kernel(d[:, None], np.zeros((1, 1)), weight_order=k)[:, 0]
    even = sum(c[j] * _width_moment(k, j) * d**j for j in range(0, 2 * k + 1, 2))
    resid = (k1 - even) / d ** (2 * k + 1)
    np.testing.assert_allclose(resid, c[2 * k + 1] * _width_moment(k, 2 * k + 1), rtol=0.02)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_spectral_tail_decays_like_matern_k_plus_half(k):
    # Spectral density ~ omega^-(2k+2) (a Matérn-(k+1/2) kernel's tail): log-log slope
    # between omega = 40 and 80, and each higher order is smaller there by a wide margin.
    omega = np.array([40.0, 80.0])
    S = _spectral_density(k, omega)
    assert np.all(S > 0)
    slope = np.log(S[1] / S[0]) / np.log(2.0)
    assert abs(slope + (2 * k + 2)) <= 0.2
    assert np.all(_spectral_density(k + 1, omega) < 0.05 * S)
    # At low frequency the density is the Gaussian's sqrt(2 pi) exp(-omega^2 / 2).
    low = np.array([0.5, 1.0, 2.0])
    ref = np.sqrt(2 * np.pi) * np.exp(-(low**2) / 2)
    np.testing.assert_allclose(_spectral_density(k, low), ref, atol=0.03)


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
def test_matern_oracle_close_to_matern_kernel(nu, np_rng):
    rng = np_rng
    X, Y = rng.normal(size=(15, 2)), rng.normal(size=(15, 2))
    K = weighted_binning_kernel(X, Y, kernel="matern", nu=nu, length_scale=0.8)
    ref = Matern(length_scale=0.8, nu=nu)(X, Y)
    assert np.abs(K - ref).max() <= 0.006


@pytest.mark.parametrize("nu", [3.5, 4.5])
def test_matern_oracle_smoother_orders_with_matching_weight_order(nu, np_rng):
    # weight_order = nu - 1/2 gives the Matérn kernel's own smoothness; close in value too.
    rng = np_rng
    X, Y = rng.normal(size=(15, 2)), rng.normal(size=(15, 2))
    k = int(nu - 0.5)
    K = weighted_binning_kernel(X, Y, kernel="matern", nu=nu, length_scale=0.8, weight_order=k)
    ref = Matern(length_scale=0.8, nu=nu)(X, Y)
    assert np.abs(K - ref).max() <= 0.003


@pytest.mark.parametrize(
    "kernel, k", [("laplacian", 2), ("gaussian", 2), ("matern", 2), ("gaussian", 3), ("matern", 3)]
)
def test_features_unbiased_for_induced_kernel(kernel, k):
    # Per-grid estimates R * w_i w_j [same cell] are i.i.d. with mean k(x_i, x_j):
    # their average must lie within 5 standard errors (deterministic seed).
    rng = np.random.default_rng(7)
    X = rng.normal(size=(5, 2)) * 0.8
    R = 20000
    est = WeightedRandomBinning(
        n_components=R, kernel=kernel, nu=1.5, weight_order=k, random_state=3
    ).fit(X)
    cells, w = est.feature_map_(torch.from_numpy(X))
    same = (cells[:, None] == cells[None, :]).all(-1).numpy()  # [n, n, R]
    per_grid = R * w.numpy()[:, None, :] * w.numpy()[None, :, :] * same
    mean, se = per_grid.mean(-1), per_grid.std(-1) / np.sqrt(R)
    K = weighted_binning_kernel(X, kernel=kernel, nu=1.5, weight_order=k)
    assert np.all(np.abs(mean - K) <= 5 * se + 1e-12)
    Z = est.transform(X)
    np.testing.assert_allclose((Z @ Z.T).toarray(), mean, atol=1e-10)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_feature_map_uses_weight_order(k, np_rng):
    # The k = 1..6 kernels are all within 0.007 of each other, too close for the Monte
    # Carlo test to tell apart: check the map's weights and widths against f_k and the
    # width law W_k * length_scale * Gamma(a_k, 1/a_k) directly.
    rng = np_rng
    X = rng.normal(size=(4, 3))
    R, ell = 4000, 0.7
    est = WeightedRandomBinning(
        n_components=R, weight_order=k, length_scale=ell, random_state=int(rng.integers(1000))
    ).fit(X)
    fmap = est.feature_map_
    cells, w = fmap(torch.from_numpy(X))
    t = (X[:, None, :] - fmap.shifts.numpy()) / fmap.widths.numpy() - cells.numpy()
    f = (t * (1 - t)) ** k / np.sqrt(beta_fn(2 * k + 1, 2 * k + 1))
    # The map computes x / w - s / w (one fused pass): positions agree to rounding.
    np.testing.assert_allclose(w.numpy(), f.prod(-1) / np.sqrt(R), rtol=1e-10, atol=1e-15)
    W, a = _WIDTH_TABLE[k]
    g = fmap.widths.numpy().ravel() / (W * ell)
    # mean 1 and variance 1/a_k, within 6 standard errors (kurtosis of Gamma(a) ~ 3).
    assert abs(g.mean() - 1.0) <= 6 * np.sqrt(1 / a / g.size)
    assert abs(g.var() - 1 / a) <= 6 * np.sqrt(2 / g.size) / a


def test_spectral_approximation_and_error_falls_with_grids():
    rng = np.random.default_rng(11)
    X = rng.uniform(-2, 2, size=(40, 2))
    K = weighted_binning_kernel(X, kernel="gaussian")
    lam = 0.1
    eps = []
    for R in (100, 400, 1600):
        e = []
        for seed in range(3):
            Z = WeightedRandomBinning(n_components=R, random_state=seed).fit_transform(X)
            e.append(_spectral_eps(K, (Z @ Z.T).toarray(), lam))
        eps.append(np.mean(e))
    assert eps[0] > 1.5 * eps[1] > 2.25 * eps[2]
    assert eps[2] < 0.5


def test_sparse_output_one_nonzero_per_grid_and_dtype(np_rng):
    rng = np_rng
    X = rng.normal(size=(50, 3)).astype(np.float32)
    est = WeightedRandomBinning(n_components=30, kernel="laplacian", random_state=0).fit(X)
    Z = est.transform(X)
    assert sp.issparse(Z) and Z.format == "csr" and Z.dtype == np.float32
    assert np.all(np.diff(Z.indptr) == 30)
    assert Z.shape[1] == est.n_features_out_ == len(est.get_feature_names_out())


def test_unseen_cells_are_dropped(np_rng):
    X = np_rng.normal(size=(20, 2))
    est = WeightedRandomBinning(n_components=10, random_state=0).fit(X)
    far = est.transform(X[:3] + 1e6)
    assert far.nnz == 0


def test_torch_map_batched(np_rng):
    X = np_rng.normal(size=(6, 2))
    est = WeightedRandomBinning(n_components=8, random_state=0).fit(X)
    cells, w = est.feature_map_(torch.from_numpy(X).reshape(2, 3, 2).float())
    assert cells.shape == (2, 3, 8, 2) and cells.dtype == torch.int64
    assert w.shape == (2, 3, 8) and w.dtype == torch.float32


X_BAD = np.random.default_rng(0).normal(size=(10, 2))


def test_bad_n_components():
    with pytest.raises(ValueError, match="n_components must be >= 1, got 0"):
        WeightedRandomBinning(n_components=0).fit(X_BAD)


def test_bad_kernel():
    with pytest.raises(ValueError, match="kernel must be one of"):
        WeightedRandomBinning(kernel="rbf").fit(X_BAD)


def test_bad_length_scale():
    with pytest.raises(ValueError, match="length_scale must be > 0.0, got -2.0"):
        WeightedRandomBinning(length_scale=-2.0).fit(X_BAD)


def test_bad_nu():
    with pytest.raises(ValueError, match="nu must be > 0.0, got 0.0"):
        WeightedRandomBinning(kernel="matern", nu=0.0).fit(X_BAD)


@pytest.mark.parametrize("k", [0, -1, MAX_WEIGHT_ORDER + 1])
def test_bad_weight_order(k):
    with pytest.raises(ValueError, match=rf"weight_order must be [<>]= \d+, got {k}"):
        WeightedRandomBinning(weight_order=k).fit(X_BAD)


def test_non_integer_weight_order():
    with pytest.raises(TypeError, match="weight_order must be an int, got float 2.5"):
        WeightedRandomBinning(weight_order=2.5).fit(X_BAD)


def test_oracle_bad_weight_order():
    with pytest.raises(ValueError, match="weight_order must be <= 6, got 7"):
        weighted_binning_kernel(X_BAD, weight_order=7)


def test_nan_input():
    X = X_BAD.copy()
    X[1, 1] = np.inf
    with pytest.raises(ValueError, match="infinity|NaN"):
        WeightedRandomBinning().fit(X)


@pytest.mark.parametrize("X, err, match", [
    (np.array([[np.nan]]), ValueError, "X must be finite"),
    (np.float64(1.0), ValueError, r"X must have shape \(n, d\)"),
    (np.zeros((2, 2, 2)), ValueError, r"X must have shape \(n, d\)"),
    (np.array([["a"]]), TypeError, "X must hold real numbers"),
])
def test_oracle_bad_input(X, err, match):
    # (fuzz: a NaN row gave a NaN kernel silently, a 0-d X an IndexError)
    with pytest.raises(err, match=match):
        weighted_binning_kernel(X)
    with pytest.raises(ValueError, match="Y must have 3 columns like X"):
        weighted_binning_kernel(np.zeros((2, 3)), np.zeros((2, 4)))


@pytest.mark.parametrize("kwargs", [{}, {"kernel": "laplacian"}, {"kernel": "matern"},
                                    {"projection_dim": 2},
                                    {"kernel": "laplacian", "projection_dim": 1}])
def test_oracle_finite_at_huge_scale(kwargs):
    # Rows 1e308 apart (differences overflow): kernel 0 off the diagonal, 1 on it (the smooth
    # profiles' diagonal within their sup distance to the Gaussian).
    X = np.array([[1e308, -1e308], [-1e308, 1e308], [1e300, 0.0]])
    K = weighted_binning_kernel(X, **kwargs)
    np.testing.assert_allclose(K, np.eye(3), atol=0.01)
    # the projected kernel's 1/s tail continues past s = 1e6 (scaled, not cut)
    if kwargs == {"projection_dim": 2}:
        r = np.array([[1e5], [1e7]])
        K = weighted_binning_kernel(r, np.zeros((1, 1)), projection_dim=1)[:, 0]
        assert K[1] * 1e7 == pytest.approx(K[0] * 1e5, rel=1e-9)


def test_oracle_bad_kernel():
    with pytest.raises(ValueError, match="kernel must be one of"):
        weighted_binning_kernel(X_BAD, kernel="cauchy")


# --- random projections (projection_dim) --------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_projected_oracle_matches_quadrature(k):
    # E_g[k1(g s)], g ~ N(0, 1), by adaptive quadrature of the closed-form 1-D kernel.
    for s in (0.0, 0.05, 0.3, 1.0, 2.5, 10.0):
        ref = quad(lambda g, s: 2 * np.exp(-g * g / 2) / np.sqrt(2 * np.pi)
                   * weighted_binning_kernel(np.array([[g * s]]), np.zeros((1, 1)),
                                             weight_order=k)[0, 0],
                   0, 40, args=(s,), limit=400, epsabs=1e-14, epsrel=1e-13)[0]
        K = weighted_binning_kernel(np.array([[s, 0.0]]), np.zeros((1, 2)), weight_order=k,
                                    projection_dim=1)
        assert abs(K[0, 0] - ref) <= 1e-11


def test_projected_laplacian_oracle_is_erfcx(np_rng):
    # E_g[exp(-|g| s)] = erfcx(s / sqrt(2)): check the closed form by quadrature, then p-th powers.
    for s in (0.0, 0.4, 3.0):
        ref = quad(lambda g, s: 2 * np.exp(-g * g / 2 - g * s) / np.sqrt(2 * np.pi), 0, np.inf,
                   args=(s,))[0]
        assert erfcx(s / np.sqrt(2)) == pytest.approx(ref, rel=1e-10)
    X, Y = np_rng.normal(size=(6, 5)), np_rng.normal(size=(4, 5))
    r = np.linalg.norm(X[:, None] - Y[None], axis=-1)
    for p in (1, 3):
        K = weighted_binning_kernel(X, Y, kernel="laplacian", length_scale=0.8, projection_dim=p)
        np.testing.assert_allclose(K, erfcx(r / (np.sqrt(2 * p) * 0.8)) ** p, rtol=1e-12)


@pytest.mark.parametrize("k, p", [(1, 1), (1, 2), (2, 2), (2, 4)])
def test_projected_gaussian_oracle_near_rational_quadratic(k, p):
    # Within p times the per-coordinate sup distance of (1 + r^2 / (p l^2))^(-p/2).
    r = np.linspace(0.0, 20.0, 801)
    X = np.stack([r, np.zeros_like(r)], 1)
    K = weighted_binning_kernel(X, np.zeros((1, 2)), length_scale=1.3, weight_order=k,
                                projection_dim=p)[:, 0]
    rq = (1 + r**2 / (p * 1.3**2)) ** (-p / 2)
    assert np.abs(K - rq).max() <= p * SUP_TO_GAUSSIAN[k]


@pytest.mark.statistical
@pytest.mark.parametrize("kernel, p", [("laplacian", 1), ("laplacian", 2), ("gaussian", 2)])
def test_projected_features_unbiased_for_induced_kernel(kernel, p, seed, measure):
    # The mean of R i.i.d. per-grid estimates vs the oracle, in standard errors; |z| <= 6 on
    # all 15 distinct entries (normal tail 2e-9 each; measured over 200 seed offsets:
    # max |z| <= 4.1, tools/stat_runs.py). Diagonal of the plain binning: exact; pairs that
    # never share a cell must have K R < 14 (otherwise that has probability < 1e-6).
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(5, 7))
    R = 20000
    est = WeightedRandomBinning(n_components=R, kernel=kernel, weight_order=1, projection_dim=p,
                                length_scale=1.3, random_state=int(rng.integers(2**31))).fit(X)
    cells, w = est.feature_map_(torch.from_numpy(X))
    same = (cells[:, None] == cells[None, :]).all(-1).numpy()
    per_grid = R * w.numpy()[:, None, :] * w.numpy()[None, :, :] * same
    mean, se = per_grid.mean(-1), per_grid.std(-1) / np.sqrt(R)
    K = weighted_binning_kernel(X, kernel=kernel, weight_order=1, projection_dim=p,
                                length_scale=1.3)
    z = np.abs(mean - K)[se > 0] / se[se > 0]
    measure("max_abs_z", z.max())
    assert z.max() <= 6.0
    if kernel == "laplacian":
        np.testing.assert_allclose(np.diag(mean), 1.0, rtol=1e-12)
    assert (K[(se == 0) & (mean == 0)] * R).max(initial=0.0) < 14.0
    Z = est.transform(X)
    np.testing.assert_allclose((Z @ Z.T).toarray(), mean, atol=1e-10)


def _gram(est, X):
    Z = est.fit_transform(X)
    return (Z @ Z.T).toarray(), Z


@pytest.mark.parametrize("kwargs", [
    {"kernel": "laplacian", "projection_dim": 2},
    {"kernel": "gaussian", "weight_order": 1, "projection_dim": 3},
    {"kernel": "laplacian", "length_scale": 3.0},  # 3 coordinates: small boxes as well
])
def test_box_hash_and_block_paths_agree(kwargs, np_rng, monkeypatch):
    # The columns may be numbered by boxes (one block, or several with bounds from a sample
    # of rows and a second pass when a row falls outside them) or by hashed keys: the same
    # grids must give the same Gram matrix and transform.
    from kernelsketch.features import binning

    X = np_rng.normal(size=(300, 3))
    X[137] *= 8.0 / np.linalg.norm(X[137])  # beyond the bounds of an evenly spaced sample
    Xt = np.vstack([np_rng.normal(size=(20, 3)), X[:5] + 100.0])

    def make():
        return WeightedRandomBinning(n_components=40, random_state=5,
                                     **{"length_scale": 0.7, **kwargs})

    est = make()
    ref, _ = _gram(est, X)
    assert isinstance(est._index, binning._BoxIndex)
    ref_t = (est.transform(Xt) @ est.transform(X).T).toarray()
    outside = []
    box_index = binning._BoxIndex
    inside = box_index.boxes_inside

    def spy(self, cells, out):
        try:
            return inside(self, cells, out)
        except binning._OutsideBoxes:
            outside.append(1)
            raise

    for patch in ({"_BoxIndex": _NeverBox}, {"_CHUNK_BYTES": 20000, "_BOUND_ROWS": 64}):
        with monkeypatch.context() as m:
            for name, value in patch.items():
                m.setattr(binning, name, value)
            m.setattr(box_index, "boxes_inside", spy)
            other = make()
            G, _ = _gram(other, X)
            np.testing.assert_allclose(G, ref, atol=1e-12)
            np.testing.assert_allclose((other.transform(Xt) @ other.transform(X).T).toarray(),
                                       ref_t, atol=1e-12)
            if "_CHUNK_BYTES" in patch:
                assert other._block_rows() < 300 and outside  # several blocks, second pass
                assert isinstance(other._index, box_index)
            else:
                assert isinstance(other._index, binning._HashIndex)


class _NeverBox:
    """A _BoxIndex stand-in whose boxes are always too large (forces hashed columns)."""

    ok = False

    def __init__(self, *args):
        pass


@pytest.mark.parametrize("kwargs, chunk", [
    ({"kernel": "laplacian", "projection_dim": 1}, None),  # box-numbered columns
    ({"projection_dim": 2}, 20000),  # weighted, several blocks
    ({"kernel": "laplacian", "length_scale": 3.0}, None),  # 10 coordinates: hashed keys
])
def test_csr_assembly_matches_cells_of_the_torch_map(kwargs, chunk, np_rng, monkeypatch):
    # The CSR arrays are built directly (regular indptr, int32 columns): Z(Y) Z(X)^T must be
    # sum_g w_g(y) w_g(x) [cells_g(y) == cells_g(x)] from the torch map's own cells, with
    # the cells of Y not seen in fit dropped, and the index arrays int32 and sorted per row.
    from kernelsketch.features import binning

    if chunk is not None:
        monkeypatch.setattr(binning, "_CHUNK_BYTES", chunk)
    X = np_rng.normal(size=(400, 10))
    Y = np.vstack([np_rng.normal(size=(30, 10)), X[:5], X[5:10] + 50.0])
    est = WeightedRandomBinning(n_components=24, random_state=3, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Z = est.fit_transform(X)
    Zy = est.transform(Y)
    for M in (Z, Zy):
        assert M.indices.dtype == M.indptr.dtype == np.int32 and M.has_sorted_indices
    assert np.all(np.diff(Z.indptr) == 24) and Z.shape[1] == est.n_features_out_
    cx, wx = (t.numpy() for t in est.feature_map_(torch.from_numpy(X)))
    cy, wy = (t.numpy() for t in est.feature_map_(torch.from_numpy(Y)))
    same = (cy[:, None] == cx[None, :]).all(-1)  # [len(Y), n, R]
    ref = np.einsum("yg,xg,yxg->yx", wy, wx, same)
    np.testing.assert_allclose((Zy @ Z.T).toarray(), ref, rtol=1e-12, atol=1e-14)
    assert Zy[-5:].nnz < 5 * 24  # far rows: cells not seen in fit are dropped


def test_unseen_cells_dropped_with_projections(np_rng):
    X = np_rng.normal(size=(50, 4))
    est = WeightedRandomBinning(n_components=30, kernel="laplacian", projection_dim=2,
                                random_state=0).fit(X)
    assert est.transform(X + 1e6).nnz == 0
    Z = est.transform(np.vstack([X[:3], X[:3] + 1e6]))
    assert np.all(np.diff(Z.indptr)[:3] == 30) and np.all(np.diff(Z.indptr)[3:] == 0)


def test_projections_serve_high_dimension_without_variance_warning(recwarn):
    # digits (d = 64): the coordinate weighting's per-grid variance E[f^4]^64 leaves
    # diag(Z Z^T) ~ 0 on most rows; two projections per grid keep it near 1.
    from sklearn.datasets import load_digits

    X = load_digits().data[::4] / 16.0
    est = WeightedRandomBinning(n_components=256, kernel="gaussian", weight_order=1,
                                projection_dim=2, length_scale=3.0, random_state=0)
    Z = est.fit_transform(X)
    assert not [w for w in recwarn if "variance" in str(w.message)]
    assert est.expected_diagonal_error_ < 0.1
    diag = np.asarray(Z.multiply(Z).sum(1)).ravel()
    assert abs(diag.mean() - 1.0) < 0.05 and diag.min() > 0.5


def test_warns_when_length_scale_isolates_rows_or_merges_them(np_rng):
    X = np_rng.normal(size=(200, 10))
    with pytest.warns(UserWarning, match="alone in their cell .* increase length_scale"):
        WeightedRandomBinning(n_components=20, kernel="laplacian", projection_dim=1,
                              length_scale=1e-4, random_state=0).fit(X)
    with pytest.warns(UserWarning, match="all training rows in one cell .* decrease"):
        WeightedRandomBinning(n_components=20, kernel="laplacian", projection_dim=1,
                              length_scale=1e4, random_state=0).fit(X)


@pytest.mark.parametrize("bad, err, match", [
    (0, ValueError, "projection_dim must be >= 1, got 0"),
    (65, ValueError, "projection_dim must be <= 64, got 65"),
    (1.5, TypeError, "projection_dim must be an int"),
])
def test_bad_projection_dim(bad, err, match):
    with pytest.raises(err, match=match):
        WeightedRandomBinning(projection_dim=bad).fit(X_BAD)


def test_projection_dim_rejects_matern():
    with pytest.raises(ValueError, match="projection_dim must be None for kernel='matern'"):
        WeightedRandomBinning(kernel="matern", projection_dim=2).fit(X_BAD)
    with pytest.raises(ValueError, match="projection_dim must be None for kernel='matern'"):
        weighted_binning_kernel(X_BAD, kernel="matern", projection_dim=2)
