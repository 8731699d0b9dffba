"""PolynomialSketch and PolynomialLeverageSampler against the exact polynomial kernel:
unbiasedness, error falling with features, spectral approximation, leverage vs
squared-norm sampling on structured inputs, comparison with scikit-learn, bad input."""

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.datasets import load_digits
from sklearn.kernel_approximation import PolynomialCountSketch
from sklearn.metrics.pairwise import polynomial_kernel
from sklearn.utils.estimator_checks import parametrize_with_checks

from kernelsketch.features import polynomial
from kernelsketch.features.polynomial import (
    PolynomialLeverageSampler,
    PolynomialSketch,
    _lift,
    _polysketch_sparse,
    sample_tensor_coordinates,
)
from kernelsketch.sketch.tensor import PolySketch


def _spectral_eps(K, Kt, lam):
    """Smallest eps with (1-eps)(K+lam I) <= Kt+lam I <= (1+eps)(K+lam I)."""
    w, V = np.linalg.eigh(K + lam * np.eye(len(K)))
    inv_sqrt = (V / np.sqrt(w)) @ V.T
    ev = np.linalg.eigvalsh(inv_sqrt @ (Kt + lam * np.eye(len(K))) @ inv_sqrt)
    return max(ev.max() - 1.0, 1.0 - ev.min())


def _all_columns(A, q):
    """Explicit A^{⊗q} (columns indexed by tuples), for small d only."""
    cols = list(itertools.product(range(A.shape[1]), repeat=q))
    return cols, np.stack([np.prod(A[:, c], axis=1) for c in cols], axis=1)



@parametrize_with_checks(
    [
        PolynomialSketch(n_components=16, random_state=0),
        PolynomialLeverageSampler(n_components=16, sketch_size=8, random_state=0),
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("kind", ["srht", "gaussian", "tensorsketch", "countsketch"])
def test_polysketch_unbiased(kind):
    # Average of independent sketches -> K, within 5 standard errors per entry
    # (the fitted torch map, rebuilt from 150 seeds without the sklearn shell).
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 3)) / np.sqrt(3)
    K = polynomial_kernel(X, degree=3, gamma=1.0, coef0=0.5)
    x = torch.from_numpy(X)
    est = []
    for s in range(150):
        fmap = PolynomialSketch(n_components=8, degree=3, coef0=0.5, kind=kind)._make_feature_map(
            3, torch.Generator().manual_seed(s), x)
        Z = fmap(x).numpy()
        est.append(Z @ Z.T)
    est = np.stack(est)
    se = est.std(0) / np.sqrt(len(est))
    assert np.all(np.abs(est.mean(0) - K) <= 5 * se + 1e-12)


def test_plain_tensorsketch_is_the_explicit_countsketch(np_rng):
    # n_exact=0 is Pham & Pagh's degree-q TensorSketch of a(x) (the construction of
    # PolynomialCountSketch): a CountSketch of a(x)^{⊗q} with bucket sum_t h_t(i_t) mod m and
    # sign prod_t s_t(i_t), checked against that explicit sum over all D^q tuples.
    X = np_rng.normal(size=(7, 4))
    est = PolynomialSketch(n_components=11, degree=3, gamma=0.7, coef0=0.5, n_exact=0,
                           random_state=0).fit(X)
    fmap = est.feature_map_
    h, s = fmap.cs_buckets.numpy(), fmap.cs_signs.numpy()
    assert est.n_exact_ == 0 and h.shape == (3, 5)
    A = _lift(torch.from_numpy(X), 0.7, 0.5).numpy()
    ref = np.zeros((7, 11))
    for i in itertools.product(range(5), repeat=3):
        ref[:, (h[0, i[0]] + h[1, i[1]] + h[2, i[2]]) % 11] += (
            s[0, i[0]] * s[1, i[1]] * s[2, i[2]] * A[:, i[0]] * A[:, i[1]] * A[:, i[2]])
    np.testing.assert_allclose(est.transform(X), ref, rtol=1e-10, atol=1e-12)


def test_countsketch_kind_head_is_oblivious_and_exact(np_rng):
    # kind="countsketch": the constant and linear monomials of a(x)^{⊗q} exact, chosen from
    # (d, q, m) alone: their columns give coef0^q + q coef0^(q-1) gamma <x, y> in float64,
    # and a fit on other rows (Dask fits on one zero row) gives the same map.
    X = np_rng.normal(size=(9, 5))
    kw = {"n_components": 64, "degree": 3, "gamma": 0.3, "coef0": 0.7, "kind": "countsketch",
          "random_state": 0}
    est = PolynomialSketch(**kw).fit(X)
    assert est.n_exact_ == 6 and est.feature_map_.width == 56  # 7-smooth, 2 zero columns
    H = est.transform(X)[:, :6]
    np.testing.assert_allclose(H @ H.T, 0.7**3 + 3 * 0.7**2 * 0.3 * X @ X.T, rtol=1e-12)
    other = PolynomialSketch(**kw).fit(np.zeros((1, 5)))
    np.testing.assert_array_equal(other.transform(X), est.transform(X))
    # too narrow for the linear part (d + 1 > m / 2): only the constant is exact
    assert PolynomialSketch(**{**kw, "n_components": 8}).fit(X).n_exact_ == 1


def test_countsketch_kind_far_below_plain_tensorsketch_on_digits():
    # The exact constant and linear monomials carry most of the kernel of positive data:
    # ratio of the mean Gram error over 10 seeds to the plain TensorSketch's (n_exact=0,
    # PolynomialCountSketch's construction) measured on 40 disjoint 40-row digits subsets:
    # 0.08-0.28 (mean 0.16, sd 0.04); 0.5 is > 8 sd above the mean.
    X = load_digits().data[7::40][:40] / 16.0
    K = polynomial_kernel(X, degree=3, gamma=1 / 64, coef0=1.0)

    def err(est):
        Z = est.fit_transform(X)
        return np.linalg.norm(Z @ Z.T - K) / np.linalg.norm(K)

    kw = {"n_components": 256, "degree": 3, "gamma": 1 / 64, "coef0": 1.0}
    ours = np.mean([err(PolynomialSketch(kind="countsketch", random_state=s, **kw))
                    for s in range(10)])
    plain = np.mean([err(PolynomialSketch(n_exact=0, random_state=s, **kw)) for s in range(10)])
    assert ours < 0.5 * plain, (ours, plain)


@pytest.mark.parametrize("kind", ["tensorsketch", "countsketch"])
def test_sparse_representations_match_dense(kind, monkeypatch):
    # Large maps apply the CountSketches by a scatter and the head's correction sparsely (a
    # scatter for few terms, "countsketch" here, else a sparse product); forced on a small
    # map, they give the dense matrices' features.
    X = np.random.default_rng(1043).normal(size=(40, 6))
    kw = {"n_components": 32, "degree": 3, "coef0": 1.0, "kind": kind, "random_state": 0}
    dense = PolynomialSketch(**kw).fit(X)
    monkeypatch.setattr(polynomial, "_DENSE_COUNTSKETCH", 0)
    scattered = PolynomialSketch(**kw).fit(X)
    fmap = scattered.feature_map_
    assert dense.feature_map_.ts_matrices.numel() and dense.feature_map_.corr_matrix.numel()
    assert not fmap.ts_matrices.numel() and not fmap.corr_matrix.numel()
    assert scattered.n_exact_ > 0 and fmap.width > 0
    # few terms per bucket (the scatter) for the oblivious head, many for the fitted one
    assert (fmap.corr_coef.numel() <= fmap.width) == (kind == "countsketch")
    np.testing.assert_allclose(scattered.transform(X), dense.transform(X), rtol=1e-10,
                               atol=1e-12)


def test_polysketch_error_falls_with_dimension(np_rng):
    rng = np_rng
    X = rng.normal(size=(50, 8))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    K = polynomial_kernel(X, degree=4, gamma=1.0, coef0=1.0)
    errs = []
    for D in (32, 128, 512):
        Z = [PolynomialSketch(n_components=D, degree=4, coef0=1.0).fit_transform(X)
             for _ in range(6)]
        errs.append(np.mean([np.linalg.norm(z @ z.T - K) for z in Z]) / np.linalg.norm(K))
    # Error ~ 1/sqrt(D): 2x per 4x features; over 40 fresh draws with 6 sketches per size the
    # smallest measured ratio was 1.5, so 1.3 leaves margin while still failing a flat error.
    assert errs[0] > 1.3 * errs[1] and errs[1] > 1.3 * errs[2], errs


def test_polysketch_spectral_approximation_error_falls():
    # (1-eps)(K+lam I) <= Z Z^T + lam I <= (1+eps)(K+lam I), eps ~ 1/sqrt(n_components).
    rng = np.random.default_rng(10)
    X = rng.normal(size=(30, 5))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    K = polynomial_kernel(X, degree=3, gamma=1.0, coef0=1.0)
    lam = 0.1
    eps = []
    for D in (128, 512, 2048):
        Z = [PolynomialSketch(n_components=D, degree=3, coef0=1.0, kind="srht",
                              random_state=s).fit_transform(X) for s in range(2)]
        eps.append(np.mean([_spectral_eps(K, z @ z.T, lam) for z in Z]))
    assert eps[0] > 1.5 * eps[1] > 2.25 * eps[2]
    assert eps[2] < 0.4


def test_polysketch_beats_tensorsketch_at_high_degree():
    # Degree-2 tree: variance polynomial in the degree; TensorSketch: exponential.
    rng = np.random.default_rng(1)
    X = rng.normal(size=(100, 16))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    K = polynomial_kernel(X, degree=8, gamma=1.0, coef0=1.0)

    def err(est):
        Z = est.fit_transform(X)
        return np.linalg.norm(Z @ Z.T - K) / np.linalg.norm(K)

    ours = np.mean([err(PolynomialSketch(n_components=256, degree=8, coef0=1.0, kind="srht",
                                         random_state=s)) for s in range(4)])
    sk = np.mean([err(PolynomialCountSketch(n_components=256, degree=8, coef0=1.0,
                                            random_state=s)) for s in range(4)])
    assert ours < 0.85 * sk


@pytest.mark.parametrize("kind", ["srht", "gaussian", "countsketch", "tensorsketch"])
def test_polysketch_sparse_input_matches_dense(kind):
    # Sparse X goes leaf by leaf through scipy (never densified): same features as dense X.
    X = _sparse_data(13, n=25, d=60, density=0.08)
    est = PolynomialSketch(n_components=32, degree=3, coef0=1.0, kind=kind, random_state=0).fit(X)
    Zs = est.transform(X)
    assert isinstance(Zs, np.ndarray) and Zs.shape == (25, 32)
    np.testing.assert_allclose(Zs, est.transform(X.toarray()), rtol=1e-10, atol=1e-12)
    Z32 = est.transform(X.astype(np.float32))
    assert Z32.dtype == np.float32


def test_sparse_tree_powers_match_dense_tree():
    X = _sparse_data(14, n=10, d=30, density=0.1)
    tree = PolySketch(30, 16, 3, kind="tensorsketch", seed=0).double()
    dense = tree.all_powers(torch.from_numpy(X.toarray()))
    for r in (1, 2, 3):
        np.testing.assert_allclose(_polysketch_sparse(tree, X, r).numpy(), dense[r].numpy(),
                                   rtol=1e-10, atol=1e-12)


def test_polysketch_torch_map_batched_float32(np_rng):
    X = np_rng.normal(size=(6, 3))
    est = PolynomialSketch(n_components=16, degree=3, coef0=1.0, random_state=0).fit(X)
    out = est.feature_map_(torch.from_numpy(X).float().reshape(2, 3, 3))
    assert out.shape == (2, 3, 16) and out.dtype == torch.float32
    np.testing.assert_allclose(out.reshape(6, 16).numpy(), est.transform(X), rtol=1e-4, atol=1e-4)


def test_leverage_sampler_unbiased():
    # The m sampled columns are i.i.d.; each contributes phi_c phi_c^T / p_c with mean K.
    rng = np.random.default_rng(2)
    X = rng.normal(size=(6, 3)) / np.sqrt(3)
    m = 20000
    est = PolynomialLeverageSampler(n_components=m, degree=3, coef0=1.0, ridge=0.1,
                                    random_state=5).fit(X)
    Z = est.transform(X)
    per_sample = m * Z[:, None, :] * Z[None, :, :]  # [n, n, m]
    se = per_sample.std(-1) / np.sqrt(m)
    K = polynomial_kernel(X, degree=3, gamma=1.0, coef0=1.0)
    assert np.all(np.abs(per_sample.mean(-1) - K) <= 5 * se + 1e-12)


def test_leverage_probabilities_close_to_exact_ridge_leverage():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 3)) / np.sqrt(3)
    lam, q = 0.1, 2
    A = _lift(torch.from_numpy(X), 1.0, 1.0).numpy()
    cols, Phi = _all_columns(A, q)
    K = Phi @ Phi.T
    tau = np.einsum("ic,ij,jc->c", Phi, np.linalg.inv(K + lam * np.eye(len(K))), Phi)
    p = tau / tau.sum()
    idx, probs = sample_tensor_coordinates(torch.from_numpy(A), q, 4000, ridge=lam,
                                           generator=torch.Generator().manual_seed(0))
    drawn = np.array([cols.index(tuple(r)) for r in idx.numpy()])
    ratio = probs.numpy() / p[drawn]
    assert ratio.min() > 0.2 and ratio.max() < 5.0


def test_leverage_sampler_spectral_error_falls():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(40, 4)) / 2
    K = polynomial_kernel(X, degree=2, gamma=1.0, coef0=1.0)
    lam = 0.5
    eps = []
    for m in (25, 100, 400):
        e = []
        for s in range(3):
            Z = PolynomialLeverageSampler(
                n_components=m, degree=2, coef0=1.0, ridge=lam, random_state=s
            ).fit_transform(X)
            e.append(_spectral_eps(K, Z @ Z.T, lam))
        eps.append(np.mean(e))
    assert eps[0] > 1.4 * eps[1] > 1.96 * eps[2]
    assert eps[2] < 0.5


def test_leverage_beats_norm_sampling_on_heavy_coordinate():
    # Coordinate 0 carries almost all the norm; the small coordinates span directions
    # of K well above the ridge. Squared-norm sampling misses them, leverage does not.
    rng = np.random.default_rng(5)
    n, q, lam, m = 30, 2, 0.05, 200
    X = np.hstack([10 * rng.normal(size=(n, 1)), 0.5 * rng.normal(size=(n, 3))])
    cols, Phi = _all_columns(X, q)
    K = Phi @ Phi.T
    norm_p = (Phi**2).sum(0) / (Phi**2).sum()
    lev, nrm = [], []
    for s in range(4):
        Z = PolynomialLeverageSampler(n_components=m, degree=q, ridge=lam,
                                      random_state=s).fit_transform(X)
        lev.append(_spectral_eps(K, Z @ Z.T, lam))
        c = np.random.default_rng(s).choice(len(cols), m, p=norm_p)
        Zn = Phi[:, c] / np.sqrt(m * norm_p[c])
        nrm.append(_spectral_eps(K, Zn @ Zn.T, lam))
    assert max(lev) < 0.8 and min(nrm) > 0.95


def test_leverage_sampler_torch_map(np_rng):
    X = np_rng.normal(size=(10, 3))
    est = PolynomialLeverageSampler(n_components=12, degree=3, coef0=1.0, random_state=0).fit(X)
    out = est.feature_map_(torch.from_numpy(X).reshape(2, 5, 3))
    assert out.shape == (2, 5, 12)
    np.testing.assert_allclose(out.reshape(10, 12).numpy(), est.transform(X), rtol=1e-10)
    assert est.indices_.shape == (12, 3) and est.indices_.max() <= 3


def _sparse_data(seed, n=40, d=300, density=0.03):
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=density, random_state=int(rng.integers(1 << 31)), format="csr",
                  data_rvs=rng.standard_normal)
    return X


def test_sparse_transform_matches_dense():
    X = _sparse_data(6)
    est = PolynomialLeverageSampler(n_components=50, degree=3, coef0=1.0, random_state=0)
    est.fit(X.toarray())
    Zs = est.transform(X)
    assert sp.issparse(Zs) and Zs.format == "csr"
    np.testing.assert_allclose(Zs.toarray(), est.transform(X.toarray()), rtol=1e-10, atol=1e-14)


def test_sparse_fit_unbiased():
    # Fitted on a CSR matrix (scores from a TensorSketch tree, O(nnz) passes): still unbiased.
    X = _sparse_data(7, n=6, d=200, density=0.05)
    m = 20000
    est = PolynomialLeverageSampler(n_components=m, degree=2, coef0=1.0, ridge=0.1,
                                    random_state=1).fit(X)
    Z = est.transform(X).toarray()
    per_sample = m * Z[:, None, :] * Z[None, :, :]
    se = per_sample.std(-1) / np.sqrt(m)
    K = polynomial_kernel(X.toarray(), degree=2, gamma=1.0, coef0=1.0)
    assert np.all(np.abs(per_sample.mean(-1) - K) <= 5 * se + 1e-12)


def test_sparse_fit_spectral_error_falls():
    X = _sparse_data(8, d=100, density=0.06)
    K = polynomial_kernel(X.toarray(), degree=2, gamma=1.0, coef0=1.0)
    lam = 0.5
    eps = []
    for m in (50, 200, 800):
        e = []
        for s in range(3):
            Z = PolynomialLeverageSampler(n_components=m, degree=2, coef0=1.0, ridge=lam,
                                          random_state=s).fit_transform(X)
            e.append(_spectral_eps(K, (Z @ Z.T).toarray(), lam))
        eps.append(np.mean(e))
    assert eps[0] > 1.4 * eps[1] > 1.96 * eps[2]


def test_sparse_fit_in_input_sparsity_space():
    # 10^9 columns (8 GB per dense row): fit and transform may only touch the non-zeros.
    # The sampled coordinates must be columns that hold data (or the sqrt(coef0) one),
    # and the features a spectral approximation of K computed from X X^T.
    rng = np.random.default_rng(12)
    n, d, nnz_row = 30, 10**9, 3
    pool = np.unique(rng.integers(0, d, size=12))
    vals, rows = rng.standard_normal(n * nnz_row), np.repeat(np.arange(n), nnz_row)
    slot = rng.integers(0, pool.size, n * nnz_row)
    X = sp.csr_matrix((vals, (rows, pool[slot])), shape=(n, d))
    X_pool = sp.csr_matrix((vals, (rows, slot)), shape=(n, pool.size)).toarray()  # same data
    K = (X_pool @ X_pool.T * 0.5 + 1.0) ** 2
    lam, m = 0.5, 2000
    est = PolynomialLeverageSampler(n_components=m, degree=2, gamma=0.5, coef0=1.0, ridge=lam,
                                    random_state=0).fit(X)
    assert np.isin(est.indices_, np.append(np.unique(X.indices), d)).all()
    Z = est.transform(X)
    assert Z.shape == (n, m)
    assert _spectral_eps(K, (Z @ Z.T).toarray(), lam) < 0.3


X_BAD = np.random.default_rng(0).normal(size=(10, 3))
BOTH = [PolynomialSketch, PolynomialLeverageSampler]


@pytest.mark.parametrize("cls", BOTH)
def test_bad_n_components(cls):
    with pytest.raises(ValueError, match="n_components must be >= 1, got 0"):
        cls(n_components=0).fit(X_BAD)


@pytest.mark.parametrize("cls", BOTH)
def test_bad_degree(cls):
    with pytest.raises(ValueError, match="degree must be >= 1, got 0"):
        cls(degree=0).fit(X_BAD)


@pytest.mark.parametrize("cls", BOTH)
def test_bad_degree_type(cls):
    with pytest.raises(TypeError, match="degree must be an int"):
        cls(degree=2.0).fit(X_BAD)


@pytest.mark.parametrize("cls", BOTH)
def test_bad_gamma(cls):
    with pytest.raises(ValueError, match="gamma must be > 0.0, got 0.0"):
        cls(gamma=0.0).fit(X_BAD)


@pytest.mark.parametrize("cls", BOTH)
def test_bad_coef0(cls):
    with pytest.raises(ValueError, match="coef0 must be >= 0.0, got -1.0"):
        cls(coef0=-1.0).fit(X_BAD)


@pytest.mark.parametrize("cls", BOTH)
def test_nan_input(cls):
    X = X_BAD.copy()
    X[2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cls().fit(X)


def test_bad_kind():
    with pytest.raises(ValueError, match="kind must be one of"):
        PolynomialSketch(kind="fft").fit(X_BAD)


def test_bad_ridge():
    with pytest.raises(ValueError, match="ridge must be > 0.0, got -0.5"):
        PolynomialLeverageSampler(ridge=-0.5).fit(X_BAD)


def test_bad_sketch_size():
    with pytest.raises(ValueError, match="sketch_size must be >= 1, got 0"):
        PolynomialLeverageSampler(sketch_size=0).fit(X_BAD)


def test_leverage_sampler_verbose_reports_steps_and_changes_nothing(np_rng, capsys):
    # verbose=1: the score sketch and each index position on stderr (tqdm); the same draws.
    X = np_rng.normal(size=(200, 6))
    kw = {"n_components": 30, "degree": 3, "gamma": 0.5, "coef0": 1.0, "random_state": 2}
    quiet = PolynomialLeverageSampler(**kw).fit(X)
    loud = PolynomialLeverageSampler(verbose=1, **kw).fit(X)
    err = capsys.readouterr().err
    assert "PolynomialLeverageSampler.fit" in err and "30 coordinates sampled" in err
    np.testing.assert_array_equal(loud.indices_, quiet.indices_)
    np.testing.assert_array_equal(loud.transform(X), quiet.transform(X))
    with pytest.raises(ValueError, match="verbose must be >= 0"):
        PolynomialLeverageSampler(verbose=-1).fit(X)


@pytest.mark.parametrize("q", [1, 2, 3, 4, 5])
def test_orderings_are_the_distinct_permutations(q, np_rng):
    # The head's TensorSketch corrections need every distinct ordering of each multiset once
    # (q <= 4: a filter over all q! permutations; q >= 5: per equality pattern).
    c = np.sort(np_rng.integers(0, 4, size=(60, q)), axis=1)
    owner, tuples = polynomial._orderings(c)
    got = sorted(zip(owner.tolist(), map(tuple, tuples.tolist())))
    ref = sorted((i, p) for i, row in enumerate(c.tolist())
                 for p in set(itertools.permutations(row)))
    assert got == ref
