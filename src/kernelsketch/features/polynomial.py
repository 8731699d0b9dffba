"""Features for the polynomial kernel ``(gamma <x, y> + coef0)^degree``.

Both transformers lift ``x -> a(x) = [sqrt(gamma) x, sqrt(coef0)]``, so the kernel
is ``<a(x), a(y)>^degree``; both take dense arrays or scipy sparse matrices
``(n_samples, n_features)`` and return float32 for float32 input.

- :class:`PolynomialSketch` (oblivious): the PolySketch degree-2 tree of
  :mod:`kernelsketch.sketch.tensor` on ``a(x)``; ``E[<S(x), S(y)>] = k(x, y)``, a
  subspace embedding with ``n_components`` polynomial in ``degree`` (Ahle et al.,
  SODA 2020, Theorem 1.2), where scikit-learn's ``PolynomialCountSketch``
  (TensorSketch) degrades exponentially.
- :class:`PolynomialLeverageSampler` (data-dependent): ``n_components``
  coordinates of ``a(X)^{⊗degree}`` sampled by approximate ridge leverage
  scores, rescaled so that ``E[Z Z^T] = K`` exactly; with
  ``O(s_lambda log s_lambda / eps^2)`` samples,
  ``(1 - eps)(K + lambda I) <= Z Z^T + lambda I <= (1 + eps)(K + lambda I)``
  (Woodruff & Zandieh, ICML 2020), in input-sparsity time for sparse ``X``.

Theory (the sampler's three steps, unbiasedness, cost, measured limits):
docs/polynomial_features.md.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from kernelsketch._checks import check_choice, check_float, check_int, check_tensor
from kernelsketch.features._base import (
    RandomFeaturesTransformer,
)
from kernelsketch.sketch.projections import CountSketch
from kernelsketch.sketch.tensor import KINDS, PolySketch

__all__ = [
    "CoordinateSampleMap",
    "PolynomialLeverageSampler",
    "PolynomialSketch",
    "PolynomialSketchMap",
    "sample_tensor_coordinates",
]

# Share of the exact squared-norm distribution mixed into each conditional (support cover).
_NORM_MIX = 0.1


def _lift(x: torch.Tensor, gamma: float, coef0: float) -> torch.Tensor:
    """``[sqrt(gamma) x, sqrt(coef0)]`` (no extra coordinate when coef0 == 0)."""
    x = math.sqrt(gamma) * x
    if coef0 == 0.0:
        return x
    const = torch.full((*x.shape[:-1], 1), math.sqrt(coef0), dtype=x.dtype, device=x.device)
    return torch.cat([x, const], dim=-1)


def _lift_sparse(X, gamma: float, coef0: float) -> sp.csr_matrix:
    """Sparse version of :func:`_lift` (CSR, float64)."""
    A = sp.csr_matrix(X, dtype=np.float64) * math.sqrt(gamma)
    if coef0 == 0.0:
        return A
    const = sp.csr_matrix(np.full((X.shape[0], 1), math.sqrt(coef0)))
    return sp.hstack([A, const], format="csr")


def _select_columns(X, cols: np.ndarray) -> sp.csr_matrix:
    """``X[:, cols]`` for CSR ``X`` and sorted distinct ``cols``, in ``O(nnz(X) log |cols|)``.

    Never allocates anything of size ``n_features`` (scipy's column indexing
    and CSC conversion do), so ``X`` may have billions of columns.
    """
    X = sp.csr_matrix(X)
    pos = np.searchsorted(cols, X.indices).clip(max=max(cols.size - 1, 0))
    keep = cols[pos] == X.indices if cols.size else np.zeros(X.indices.size, bool)
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    return sp.csr_matrix(
        (X.data[keep].astype(np.float64), (rows[keep], pos[keep])), shape=(X.shape[0], cols.size)
    )


def _check_poly_params(est) -> None:
    check_int("n_components", est.n_components, min=1)
    check_int("degree", est.degree, min=1)
    check_float("gamma", est.gamma, min=0.0, min_exclusive=True)
    check_float("coef0", est.coef0, min=0.0)


class PolynomialSketchMap(nn.Module):
    """Torch map ``x -> PolySketch([sqrt(gamma) x, sqrt(coef0)])``, ``[..., d] -> [..., d_out]``."""

    def __init__(self, sketch: PolySketch, gamma: float, coef0: float):
        super().__init__()
        self.sketch, self.gamma, self.coef0 = sketch, gamma, coef0
        self.d_out = sketch.d_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x)
        return self.sketch(_lift(x, self.gamma, self.coef0))


class PolynomialSketch(RandomFeaturesTransformer):
    """Oblivious PolySketch features for the kernel ``(gamma <x, y> + coef0)^degree``.

    ``transform(X) @ transform(Y).T`` is an unbiased estimate of the polynomial
    kernel matrix. The degree-2 tree (Ahle et al., SODA 2020) keeps the variance
    polynomial in ``degree``, where TensorSketch (scikit-learn's
    ``PolynomialCountSketch``) degrades exponentially; SRHT nodes also give
    lower variance than CountSketch at equal ``n_components``.

    Parameters
    ----------
    n_components : int, default 100
        Output dimension.
    degree : int, default 2
    gamma : float, default 1.0
    coef0 : float, default 0.0
        Must be >= 0 (the kernel is then positive definite).
    kind : {"srht", "gaussian", "countsketch", "tensorsketch"}, default "srht"
        Node sketch of the tree (see :class:`kernelsketch.sketch.tensor.PolySketch`).
    random_state : int, RandomState or None

    Scipy sparse input is accepted and never densified: with ``kind="tensorsketch"``
    or ``"countsketch"`` (CountSketch leaves) ``transform`` costs
    ``O(degree (nnz(X) + n_features))`` (reading each leaf's hash once) plus the
    node sketches, input-sparsity time as in Ahle et al.; the ``"srht"`` / ``"gaussian"`` leaves are dense ``[n_features, n_components]``
    matrices (``O(nnz(X) n_components)``).

    Attributes
    ----------
    feature_map_ : PolynomialSketchMap
        Torch map, usable on GPU after ``.to("cuda")``.

    References
    ----------
    Ahle et al., "Oblivious Sketching of High-Degree Polynomial Kernels", SODA 2020.
    """

    _accept_sparse = True

    def __init__(
        self,
        *,
        n_components: int = 100,
        degree: int = 2,
        gamma: float = 1.0,
        coef0: float = 0.0,
        kind: str = "srht",
        random_state=None,
    ):
        self.n_components = n_components
        self.degree = degree
        self.gamma = gamma
        self.coef0 = coef0
        self.kind = kind
        self.random_state = random_state

    def _check_params(self, n_features: int) -> None:
        _check_poly_params(self)
        check_choice("kind", self.kind, KINDS)

    def _make_feature_map(self, n_features, generator, X):
        d = n_features + (self.coef0 != 0.0)
        sketch = PolySketch(d, self.n_components, self.degree, kind=self.kind, generator=generator)
        return PolynomialSketchMap(sketch.double(), float(self.gamma), float(self.coef0))

    def _transform_sparse(self, X) -> np.ndarray:
        """Features of scipy sparse ``X`` (dense ndarray in the dtype of ``X``), without densifying it."""
        A = _lift_sparse(X, float(self.gamma), float(self.coef0))
        return _polysketch_sparse(self.feature_map_.sketch, A).numpy().astype(X.dtype)


class CoordinateSampleMap(nn.Module):
    """Torch map to sampled tensor-power coordinates: ``prod_t a(x)[J[s, t]] * scale[s]``.

    Parameters
    ----------
    indices : int64 Tensor [m, q]
        Sampled coordinates ``(j_1, ..., j_q)`` of ``a(x)^{⊗q}``.
    scale : Tensor [m]
        ``1 / sqrt(m p_c)``.
    gamma, coef0 : float
        The lift ``a(x) = [sqrt(gamma) x, sqrt(coef0)]``.

    ``forward(x [..., d]) -> [..., m]`` in the input dtype, any device after ``.to``.
    """

    def __init__(self, indices: torch.Tensor, scale: torch.Tensor, gamma: float, coef0: float):
        super().__init__()
        self.register_buffer("indices", indices)
        self.register_buffer("scale", scale)
        self.gamma, self.coef0 = gamma, coef0
        self.d_out = indices.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x)
        dtype = x.dtype
        work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        a = _lift(x.to(work), self.gamma, self.coef0)
        out = a[..., self.indices].prod(-1) * self.scale.to(work)
        return out.to(dtype)


def _tmatmul(A, M: torch.Tensor) -> torch.Tensor:
    """``A^T @ M`` for a dense tensor or a scipy sparse ``A`` (``O(nnz(A) * cols(M))``)."""
    if sp.issparse(A):
        return torch.from_numpy(np.asarray(A.T @ M.numpy()))
    return A.mT @ M


def _column(A, j: int) -> torch.Tensor:
    """Column ``j`` of a dense tensor or a scipy CSC matrix, as a dense [n] tensor."""
    if sp.issparse(A):
        return torch.from_numpy(A[:, [j]].toarray().ravel())
    return A[:, j]


def _countsketch_matrix(cs: CountSketch) -> sp.csr_matrix:
    """The CountSketch as a scipy sparse [d_in, d_out] matrix (one ±1 per row), float64."""
    signs = cs.signs.detach().cpu().numpy().astype(np.float64)
    rows = np.arange(cs.d_in)
    return sp.csr_matrix((signs, (rows, cs.buckets.cpu().numpy())), shape=(cs.d_in, cs.d_out))


def _polysketch_sparse(tree: PolySketch, A, power: int | None = None,
                       cache: dict | None = None) -> torch.Tensor:
    """Sketch of ``A^{⊗power}`` by ``tree`` for scipy sparse ``A`` [n, d_in], float64 [n, d_out].

    Equals ``tree.all_powers(A.toarray())[power]`` (``tree(A.toarray())`` for the
    default ``power = tree.degree``) without densifying ``A``. Leaves are linear,
    so leaf(A) = ``A @ leaf matrix``: ``O(nnz(A))`` for CountSketch leaves (kinds
    "countsketch", "tensorsketch"), ``O(nnz(A) d_out)`` for the dense Gaussian /
    SRHT leaf matrices; the tree combines them
    (:meth:`~kernelsketch.sketch.tensor.PolySketch.power_from_leaves`). One
    ``cache`` dict shared over several powers computes each leaf product once.
    """
    power = tree.degree if power is None else power

    def leaf_of_a(i: int) -> torch.Tensor:
        leaf = tree.leaves[i]
        M = _countsketch_matrix(leaf) if isinstance(leaf, CountSketch) else leaf.matrix.numpy()
        out = A @ M
        return torch.from_numpy(out.toarray() if sp.issparse(out) else np.asarray(out))

    with torch.no_grad():
        return tree.power_from_leaves(leaf_of_a, power, cache,
                                      like=torch.zeros(0, dtype=torch.float64))


def _completion_scores(A, B: torch.Tensor, psi: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
    """``sum_l ||psi^T (B_l * v * A[:, j])||^2`` for every column ``j`` -> [d].

    ``psi=None`` stands for the exact constant feature (last index: no completion).
    ``A`` is a dense tensor or a scipy sparse matrix.
    """
    T = B * v  # [k, n]
    if psi is None:
        return (_tmatmul(A, T.mT) ** 2).sum(1)
    k, n = T.shape
    out = torch.zeros(A.shape[1], dtype=T.dtype)
    step = max(1, 2**22 // max(1, n * psi.shape[1]))  # bound the [n, rows * D] temporary
    for lo in range(0, k, step):
        M = (T[lo:lo + step, :, None] * psi[None]).permute(1, 0, 2).reshape(n, -1)
        out += (_tmatmul(A, M) ** 2).sum(1)
    return out


def sample_tensor_coordinates(
    A,
    degree: int,
    num_samples: int,
    *,
    ridge: float,
    sketch_size: int = 64,
    jl_size: int = 32,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample coordinates of ``A^{⊗degree}`` by approximate ridge leverage scores.

    Parameters
    ----------
    A : Tensor [n, d] float64, or scipy.sparse matrix [n, d]
        Rows are the (lifted) data points; the kernel is ``K = (A A^T)^{∘degree}``.
    degree : int >= 1
    num_samples : int
        Number ``m`` of coordinates drawn (with replacement).
    ridge : float > 0
        ``lambda`` of the ridge leverage scores.
    sketch_size : int, default 64
        PolySketch dimension ``D`` used for the score estimates.
    jl_size : int, default 32
        Rows ``k`` of the Gaussian JL applied to ``(K + lambda I)^{-1/2}``.
    generator : torch.Generator, optional

    Returns
    -------
    indices : int64 Tensor [m, degree]
        Column indices of ``A`` (in its own numbering, also for sparse ``A``).
    probs : Tensor [m], float64
        Exact probability with which each tuple was drawn (so weights
        ``1 / (m probs)`` make ``K~`` unbiased).

    Notes
    -----
    Cost for sparse ``A`` (input-sparsity time: nothing of size ``d`` or ``d^q``
    is formed). Empty columns, which no sample can hit, are dropped first, so
    ``d`` below is at most ``nnz(A)``. The first index costs one pass
    ``O(nnz(A) k D)``; each later index costs ``O(nnz(A_R) k D + n k + d)`` per
    distinct drawn prefix, where ``A_R`` are the rows on which the prefix
    product ``a_{j_1} * ... * a_{j_{t-1}}`` is non-zero (only those rows, and
    the columns they touch, can contribute to a completion). Plus the
    ``O(degree^2 nnz(A))`` PolySketch pass (TensorSketch tree with CountSketch
    leaves applied to the sparse rows) and an ``O(n D^2)`` SVD. Dense ``A`` is the
    case ``nnz = n d`` (Gaussian tree).
    """
    sparse = sp.issparse(A)
    if sparse:
        A = sp.csr_matrix(A, dtype=np.float64)
        cols = np.unique(A.indices)
        if cols.size == 0:  # K = 0: any coordinate (all have weight 0)
            cols = np.zeros(1, dtype=A.indices.dtype)
        A = _select_columns(A, cols)
        A_csc = A.tocsc()  # column access for the prefix products
    n = A.shape[0]
    if sparse:
        tree = PolySketch(A.shape[1], sketch_size, degree, kind="tensorsketch",
                          generator=generator).double()
        const = torch.zeros(n, sketch_size, dtype=torch.float64)
        const[:, 0] = 1.0
        cache: dict = {}
        psi = [const] + [_polysketch_sparse(tree, A, r, cache) for r in range(1, degree + 1)]
    else:
        tree = PolySketch(A.shape[1], sketch_size, degree, kind="gaussian",
                          generator=generator).double()
        with torch.no_grad():
            psi = tree.all_powers(A)  # psi[r] ~ A^{⊗r}, [n, D]
    U, S, _ = torch.linalg.svd(psi[degree], full_matrices=False)
    shrink = 1.0 - torch.sqrt(ridge / (S * S + ridge))
    G = torch.randn(jl_size, n, generator=generator, dtype=torch.float64) / math.sqrt(jl_size)
    B = (G - ((G @ U) * shrink) @ U.mT) / math.sqrt(ridge)  # [k, n], B^T B ~ (K + lam I)^{-1}

    A_sq = A.multiply(A).tocsr() if sparse else A * A
    row_sq = torch.as_tensor(np.asarray(A_sq.sum(1)).ravel()) if sparse else A_sq.sum(-1)
    indices = torch.zeros(num_samples, degree, dtype=torch.int64)
    probs = torch.ones(num_samples, dtype=torch.float64)
    prefix_vec = {(): torch.ones(n, dtype=torch.float64)}
    groups = {(): torch.arange(num_samples)}
    for t in range(degree):
        remaining = degree - t - 1
        new_groups, new_vec = {}, {}
        for prefix, members in groups.items():
            v = prefix_vec[prefix]
            A_r, A_sq_r, B_r, v_r, sq_r = A, A_sq, B, v, row_sq
            psi_r = psi[remaining] if remaining else None
            support = None
            if sparse and t > 0:
                # Only the rows where the prefix product is non-zero, and the columns
                # those rows touch, can carry a completion's mass.
                rows = torch.nonzero(v).ravel()
                A_r = A[rows.numpy()]
                support = np.unique(A_r.indices)
                A_r, A_sq_r = _select_columns(A_r, support), _select_columns(A_sq[rows.numpy()], support)
                B_r, v_r, sq_r = B[:, rows], v[rows], row_sq[rows]
                psi_r = psi_r[rows] if remaining else None
            lev = _completion_scores(A_r, B_r, psi_r, v_r)
            norm = _tmatmul(A_sq_r, (v_r * v_r * sq_r**remaining)[:, None])[:, 0]
            if support is not None:
                lev, norm = (torch.zeros(A.shape[1], dtype=torch.float64).index_copy(
                    0, torch.from_numpy(support.astype(np.int64)), x) for x in (lev, norm))
            if float(norm.sum()) <= 0.0:  # every completion is zero: any draw has weight 0
                norm = torch.ones_like(norm)
            dist = (1 - _NORM_MIX) * lev / lev.sum().clamp_min(1e-300) + _NORM_MIX * norm / norm.sum()
            dist = dist / dist.sum()  # exactly normalised, also when every lev estimate is 0
            draws = torch.multinomial(dist, members.numel(), replacement=True, generator=generator)
            indices[members, t] = draws
            probs[members] *= dist[draws]
            for j in draws.unique().tolist():
                key = prefix + (j,)
                new_groups[key] = members[draws == j]
                new_vec[key] = v * _column(A_csc if sparse else A, j)
        groups, prefix_vec = new_groups, new_vec
    if sparse:
        indices = torch.from_numpy(cols.astype(np.int64))[indices]
    return indices, probs


class PolynomialLeverageSampler(RandomFeaturesTransformer):
    """Sampled coordinates of ``a(x)^{⊗degree}`` by approximate ridge leverage scores.

    ``fit`` and ``transform`` take dense arrays or scipy sparse matrices;
    ``transform`` returns an ndarray for dense input and a CSR matrix for sparse
    input, float32 for float32 input.

    Data-dependent features for ``(gamma <x, y> + coef0)^degree``: ``fit`` samples
    ``n_components`` coordinates of the tensor power of the training data with
    probabilities close to their ridge leverage scores (Woodruff & Zandieh, ICML
    2020); each output feature is a product of ``degree`` input coordinates,
    rescaled so that ``E[Z Z^T] = K`` exactly. With enough samples it is a spectral
    approximation ``(1 - eps)(K + ridge I) <= Z Z^T + ridge I <= (1 + eps)(K + ridge I)``
    on the training data, the guarantee kernel ridge regression needs.

    Parameters
    ----------
    n_components : int, default 100
        Number of sampled coordinates (output features).
    degree : int, default 2
    gamma : float, default 1.0
    coef0 : float, default 0.0
    ridge : float, optional
        ``lambda`` of the leverage scores; default ``trace(K) / n_components``.
    sketch_size : int, default 64
        PolySketch dimension for the score estimates. The estimated kernel has rank
        at most ``sketch_size``; when the statistical dimension at ``ridge`` is larger,
        the scores drift toward squared-norm sampling. Raising it improves them at
        a cost linear in it (measured: docs/polynomial_features.md).
    random_state : int, RandomState or None

    Notes
    -----
    Sparse input (scipy CSR/CSC) is fitted and transformed in input-sparsity time:
    nothing of size ``n_features`` is allocated (see :func:`sample_tensor_coordinates`).
    Dense input costs ``O(n d k D)`` per distinct sampled index prefix; pass wide
    data that has many zeros as a sparse matrix (docs/polynomial_features.md).

    Attributes
    ----------
    feature_map_ : CoordinateSampleMap
        Torch map (GPU after ``.to("cuda")``).
    indices_ : ndarray of shape (n_components, degree)
        Sampled coordinates (index ``n_features_in_`` is the ``sqrt(coef0)`` coordinate).
    probabilities_ : ndarray of shape (n_components,)

    References
    ----------
    D. Woodruff, A. Zandieh. "Near Input Sparsity Time Kernel Embeddings via
    Adaptive Sampling", ICML 2020.
    """

    _accept_sparse = True

    def __init__(
        self,
        *,
        n_components: int = 100,
        degree: int = 2,
        gamma: float = 1.0,
        coef0: float = 0.0,
        ridge: float | None = None,
        sketch_size: int = 64,
        random_state=None,
    ):
        self.n_components = n_components
        self.degree = degree
        self.gamma = gamma
        self.coef0 = coef0
        self.ridge = ridge
        self.sketch_size = sketch_size
        self.random_state = random_state

    def _check_params(self, n_features: int) -> None:
        _check_poly_params(self)
        if self.ridge is not None:
            check_float("ridge", self.ridge, min=0.0, min_exclusive=True)
        check_int("sketch_size", self.sketch_size, min=1)

    def _transform_sparse(self, X) -> sp.csr_matrix:
        """Sampled coordinates of scipy sparse ``X``, as CSR in the dtype of ``X``.

        Only the sampled input columns are read (``O(nnz(X))``, nothing of size
        ``n_features``); index ``n_features_in_`` (the ``sqrt(coef0)`` coordinate)
        maps to the lifted last column.
        """
        used = np.unique(self.indices_)
        used = used[used < self.n_features_in_]
        A = _lift_sparse(_select_columns(X, used), float(self.gamma), float(self.coef0))
        local = np.searchsorted(used, self.indices_)
        Z = A[:, local[:, 0]]
        for t in range(1, local.shape[1]):
            Z = Z.multiply(A[:, local[:, t]])
        scale = self.feature_map_.scale.numpy()
        return sp.csr_matrix(sp.csr_matrix(Z).multiply(scale[None, :]), dtype=X.dtype)

    def _make_feature_map(self, n_features, generator, X):
        gamma, coef0 = float(self.gamma), float(self.coef0)
        if sp.issparse(X):
            A = _lift_sparse(X, gamma, coef0)
            trace = float((np.asarray(A.multiply(A).sum(1)).ravel() ** self.degree).sum())
        else:
            A = _lift(X.to(torch.float64), gamma, coef0)
            trace = float(((A * A).sum(-1) ** self.degree).sum())
        ridge = trace / self.n_components if self.ridge is None else float(self.ridge)
        ridge = max(ridge, 1e-12 * max(trace, 1e-300))
        idx, probs = sample_tensor_coordinates(
            A, self.degree, self.n_components, ridge=ridge,
            sketch_size=self.sketch_size, generator=generator,
        )
        self.indices_ = idx.numpy()
        self.probabilities_ = probs.numpy()
        self.ridge_ = ridge
        scale = 1.0 / torch.sqrt(self.n_components * probs)
        return CoordinateSampleMap(idx, scale, gamma, coef0)
