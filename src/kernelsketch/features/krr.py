"""Kernel ridge regression in the primal, on any feature map of :mod:`kernelsketch.features`.

With features ``Z = phi(X)`` [n, D], ``Z Z^T ~ K``, kernel ridge regression becomes
``w = (Z^T Z + alpha I)^{-1} Z^T y``, ``f(x) = phi(x) . w``: ``O(n D^2)`` by Cholesky
or ``O(nnz(Z))`` per conjugate-gradient step, in torch on the features' device
(scipy sparse features as torch sparse CSR). When ``(1 - eps)(K + alpha I) <=
Z Z^T + alpha I <= (1 + eps)(K + alpha I)``, the in-sample predictions are within
a ``O(eps)`` factor of exact KRR's risk (Avron et al., ICML 2017).

Theory and solvers: docs/kernel_ridge.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils.validation import check_is_fitted, validate_data

from kernelsketch._checks import check_choice, check_float, check_int, check_same, check_tensor
from kernelsketch.distributed.dask import is_dask_array, normal_equations, predict_kernel_ridge
from kernelsketch.features._base import Progress

__all__ = ["KernelRidge", "conjugate_gradient", "gram_solve", "ridge_solve"]

# Above this many features the normal matrix D x D is not formed ("auto" uses CG).
_CHOLESKY_MAX_FEATURES = 4096


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    preconditioner: torch.Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int | None = None,
) -> tuple[torch.Tensor, int]:
    """Solve ``A x = b`` for symmetric positive definite ``A`` by (Jacobi-)preconditioned CG.

    Each column of ``b`` is an independent system solved simultaneously (its own
    step sizes); iteration stops when every column has
    ``||b - A x|| <= tol * ||b||``.

    Parameters
    ----------
    matvec : callable
        ``v [D, k] -> A v [D, k]``.
    b : Tensor of shape [D] or [D, k], float32 or float64
    preconditioner : Tensor of shape [D], optional
        Positive diagonal ``M`` approximating ``diag(A)``; CG runs on ``M^{-1} A``.
    tol : float, default 1e-6
        Relative residual tolerance.
    max_iter : int, optional
        Default ``10 * D``.

    Returns
    -------
    x : Tensor shaped like ``b``
    n_iter : int
        Number of iterations run.
    """
    check_tensor("b", b, ndim=(1, 2), dtypes=(torch.float32, torch.float64))
    check_float("tol", tol, min=0.0, min_exclusive=True)
    vector = b.dim() == 1
    B = b[:, None] if vector else b
    D = B.shape[0]
    max_iter = 10 * D if max_iter is None else check_int("max_iter", max_iter, min=1)
    if preconditioner is not None:
        check_tensor("preconditioner", preconditioner, ndim=1)
        if preconditioner.shape[0] != D or not bool((preconditioner > 0).all()):
            raise ValueError(
                f"preconditioner must be a positive vector of length {D}, "
                f"got shape {list(preconditioner.shape)}"
            )
        inv_m = (1.0 / preconditioner).to(B.dtype)[:, None]
    else:
        inv_m = torch.ones_like(B[:, :1])

    x = torch.zeros_like(B)
    r = B.clone()
    z = inv_m * r
    p = z.clone()
    rz = (r * z).sum(0)
    b_norm = B.norm(dim=0).clamp_min(torch.finfo(B.dtype).tiny)
    n_iter = 0
    while n_iter < max_iter and bool((r.norm(dim=0) > tol * b_norm).any()):
        Ap = matvec(p)
        pAp = (p * Ap).sum(0)
        # Columns already converged have p = 0; keep their step at zero.
        step = torch.where(pAp > 0, rz / pAp.clamp_min(torch.finfo(B.dtype).tiny), 0.0)
        x = x + step * p
        r = r - step * Ap
        z = inv_m * r
        rz_new = (r * z).sum(0)
        p = z + torch.where(rz > 0, rz_new / rz.clamp_min(torch.finfo(B.dtype).tiny), 0.0) * p
        rz = rz_new
        n_iter += 1
    return (x[:, 0] if vector else x), n_iter


def _check_cg_params(tol, max_iter) -> None:
    check_float("tol", tol, min=0.0, min_exclusive=True)
    if max_iter is not None:
        check_int("max_iter", max_iter, min=1)


def _check_device(device) -> torch.device:
    try:
        dev = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device must be None, a device string such as 'cpu' or 'cuda:0', or a "
            f"torch.device, got {device!r}"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device must be available: got {device!r}, but this torch build "
                         f"({torch.__version__}) has no usable CUDA device; use device='cpu'")
    return dev


def _check_sample_weight(sample_weight, n: int) -> np.ndarray | None:
    """Non-negative finite weights [n], not all zero (None passes through)."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},) like X's rows, got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any() or not (w > 0).any():
        raise ValueError("sample_weight must be finite and >= 0 and not all zero, got "
                         f"min {w.min():.3g}, max {w.max():.3g}")
    return w


def _as_torch_features(Z, device, dtype) -> torch.Tensor:
    """Features as a torch tensor (sparse CSR for scipy sparse input) on ``device``."""
    if sp.issparse(Z):
        Z = sp.csr_matrix(Z)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                torch.from_numpy(Z.indptr.astype(np.int64)),
                torch.from_numpy(Z.indices.astype(np.int64)),
                torch.from_numpy(Z.data.astype(np.float64)),
                size=Z.shape,
                check_invariants=False,
            ).to(device=device, dtype=dtype)
    if isinstance(Z, torch.Tensor):
        return Z.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(Z), dtype=dtype, device=device)


def gram_solve(G: torch.Tensor, rhs: torch.Tensor, alpha: float, *, features=None,
               y: torch.Tensor | None = None) -> torch.Tensor:
    """``(G + alpha I)^{-1} rhs`` by Cholesky, for ``G = ZᵀZ`` [D, D] and ``rhs = Zᵀy``
    [D] or [D, k] (same dtype and device).

    Where ``alpha`` is below the rounding of ``G`` (``D eps max diag G``: a Cholesky factor
    would be garbage or fail), the same minimiser
    ``V diag(s / (s² + alpha)) Uᵀ y`` from the SVD of ``features`` (``Z``, with ``y``)
    when given, else from ``G``'s eigenvectors above its rounding level.
    """
    D = G.shape[0]
    R = rhs if rhs.dim() == 2 else rhs[:, None]
    rounding = D * torch.finfo(G.dtype).eps * float(G.diagonal().abs().max()) if D else 0.0
    L, info = torch.linalg.cholesky_ex(G + alpha * torch.eye(D, dtype=G.dtype, device=G.device))
    if int(info) == 0 and alpha > rounding:
        w = torch.cholesky_solve(R, L)
    elif features is not None:
        Z = features.to_dense() if features.layout != torch.strided else features
        U, sv, Vh = torch.linalg.svd(Z, full_matrices=False)
        Y = y if y.dim() == 2 else y[:, None]
        w = Vh.mT @ ((sv / (sv * sv + alpha))[:, None] * (U.mT @ Y))
    else:  # directions within G's rounding carry no resolvable signal: dropped
        lam, V = torch.linalg.eigh(G)
        keep = lam > D * torch.finfo(G.dtype).eps * lam.abs().max()
        V = V[:, keep]
        w = V @ ((V.mT @ R) / (lam[keep] + alpha)[:, None])
    return w if rhs.dim() == 2 else w[:, 0]


def ridge_solve(
    features: torch.Tensor,
    y: torch.Tensor,
    alpha: float,
    *,
    solver: str = "auto",
    tol: float = 1e-8,
    max_iter: int | None = None,
    return_n_iter: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, int]:
    """Primal ridge weights ``w = (Z^T Z + alpha I)^{-1} Z^T y``.

    Parameters
    ----------
    features : Tensor of shape [n, D], float32 or float64, dense or sparse CSR (CPU or CUDA)
    y : Tensor of shape [n] or [n, k], same dtype and device as ``features``
    alpha : float > 0
        Ridge; ``(Z^T Z + alpha I)`` is then positive definite.
    solver : {"auto", "cholesky", "cg"}
        ``"cholesky"`` forms the ``D x D`` normal matrix (``O(n D^2)``);
        ``"cg"`` runs Jacobi-preconditioned conjugate gradients with two
        products by ``Z`` per step (``O(nnz(Z))``). ``"auto"`` is Cholesky for
        dense features with ``D <= 4096``, CG otherwise.
    tol : float, default 1e-8
        CG relative residual tolerance.
    max_iter : int, optional
        CG iteration cap (default ``10 * D``).
    return_n_iter : bool, default False
        Also return the number of CG iterations (1 for Cholesky).

    Returns
    -------
    w : Tensor of shape [D] or [D, k]
    n_iter : int, only if ``return_n_iter``
    """
    sparse = features.layout != torch.strided
    if sparse:
        if features.layout != torch.sparse_csr:
            raise ValueError(f"features must be dense or sparse CSR, got layout {features.layout}")
        if features.dim() != 2:
            raise ValueError(f"features must have 2 dimensions, got shape {list(features.shape)}")
        if features.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"features must have dtype float32 or float64, got {features.dtype}")
    else:
        check_tensor("features", features, ndim=2, dtypes=(torch.float32, torch.float64))
    check_tensor("y", y, ndim=(1, 2), dtypes=(torch.float32, torch.float64))
    check_same(("features", "y"), (features, y))
    if y.shape[0] != features.shape[0]:
        raise ValueError(
            f"y must have {features.shape[0]} rows like features {list(features.shape)}, "
            f"got shape {list(y.shape)}"
        )
    alpha = check_float("alpha", alpha, min=0.0, min_exclusive=True)
    check_choice("solver", solver, ("auto", "cholesky", "cg"))
    _check_cg_params(tol, max_iter)
    D = features.shape[1]
    if solver == "auto":
        solver = "cholesky" if (not sparse and D <= _CHOLESKY_MAX_FEATURES) else "cg"

    Z = features
    Zt = Z.t().to_sparse_csr() if sparse else Z.mT
    rhs = Zt @ y if y.dim() == 2 else (Zt @ y[:, None])[:, 0]
    if solver == "cholesky":
        G = (Zt @ Z).to_dense() if sparse else Zt @ Z
        w = gram_solve(G, rhs, alpha, features=Z, y=y)
        return (w, 1) if return_n_iter else w

    def normal_matvec(v: torch.Tensor) -> torch.Tensor:
        return Zt @ (Z @ v) + alpha * v

    if sparse:
        col_sq = torch.zeros(D, dtype=Z.dtype, device=Z.device)
        col_sq.index_add_(0, Z.col_indices(), Z.values() ** 2)
    else:
        col_sq = (Z * Z).sum(0)
    w, n_iter = conjugate_gradient(
        normal_matvec, rhs, preconditioner=col_sq + alpha, tol=tol, max_iter=max_iter
    )
    return (w, max(n_iter, 1)) if return_n_iter else w


class KernelRidge(RegressorMixin, BaseEstimator):
    """Kernel ridge regression through a randomized feature map, solved in the primal.

    ``fit`` fits ``features`` (a clone) on ``X``, maps ``Z = features.transform(X)``
    and solves ``min_w ||Z w - (y - mean(y))||^2 + alpha ||w||^2`` with
    :func:`ridge_solve` in torch; ``predict`` returns ``features.transform(X) @ w +
    mean(y)``. With ``Z Z^T`` a spectral approximation of the kernel matrix this
    is approximate kernel ridge regression with the feature map's kernel.

    Parameters
    ----------
    features : transformer, default None
        Any fit/transform feature map (``RLSNystroem``, ``WeightedRandomBinning``
        (sparse), ``PolynomialSketch``, ``PolynomialLeverageSampler``,
        ``GegenbauerFeatures``, scikit-learn's ``RBFSampler`` / ``Nystroem``...).
        ``None`` uses ``RLSNystroem()`` (Gaussian kernel).
    alpha : float, default 1.0
        Ridge regularization (> 0), on the same scale as sklearn's ``KernelRidge``.
    fit_intercept : bool, default True
        Center ``y`` before solving and add its mean back when predicting.
    solver : {"auto", "cholesky", "cg"}, default "auto"
        See :func:`ridge_solve`; sparse features always use CG.
    tol : float, default 1e-8
        CG tolerance.
    max_iter : int, optional
        CG iteration cap.
    device : str or torch.device, optional
        Where to solve (e.g. ``"cuda"``); default CPU.
    random_state : int, RandomState or None
        Seeds the default features (``features=None``): ``RLSNystroem(random_state=...)``,
        so the estimator is deterministic whenever it is an int (scikit-learn's meaning:
        ``None`` draws from numpy's global RandomState). Given ``features`` keep their own.
    verbose : int, default 0
        ``>= 1``: progress of the fit (features, solve; CG iterations) on a tqdm bar when
        tqdm is installed, else one line per stage on stderr.

    Sparse ``X`` (scipy CSR) is accepted when ``features`` accepts it (e.g.
    ``WeightedRandomBinning``, ``PolynomialSketch``); the default features do not.
    ``fit(X, y, sample_weight)`` solves the weighted problem
    ``min_w sum_i s_i (z_i . w + b - y_i)^2 + alpha ||w||^2`` (``b``: the weighted mean of
    ``y``); the feature map is fitted unweighted.

    Attributes
    ----------
    features_ : fitted transformer
    coef_ : ndarray of shape (D,) or (D, n_targets)
    intercept_ : float or ndarray of shape (n_targets,)
    n_iter_ : int
        Conjugate-gradient iterations (1 for the Cholesky solve).
    n_features_in_ : int
    """

    def __init__(
        self,
        features=None,
        *,
        alpha: float = 1.0,
        fit_intercept: bool = True,
        solver: str = "auto",
        tol: float = 1e-8,
        max_iter: int | None = None,
        device=None,
        random_state=None,
        verbose: int = 0,
    ):
        self.features = features
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _features(self):
        if self.features is None:
            from kernelsketch.features.nystroem import RLSNystroem

            return RLSNystroem(random_state=self.random_state)
        if not (hasattr(self.features, "fit") and hasattr(self.features, "transform")):
            raise TypeError(
                "features must be a transformer with fit and transform, "
                f"got {type(self.features).__name__}"
            )
        return clone(self.features)

    def fit(self, X, y, sample_weight=None):
        """Fit the feature map on ``X`` and solve the primal ridge problem.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative weights of the squared errors (not all zero).

        Returns
        -------
        self

        Dask arrays (``X`` and/or ``y``): the features are computed chunk by chunk on the
        Dask scheduler in use and only ``ZᵀZ``, ``Zᵀy`` are reduced (memory: a few chunks
        plus D²), for feature maps whose fit does not read the data
        (:mod:`kernelsketch.distributed.dask`); the others raise ``TypeError``.
        """
        if not isinstance(self.fit_intercept, (bool, np.bool_)):
            raise TypeError(f"fit_intercept must be a bool, got {type(self.fit_intercept).__name__}"
                            f" {self.fit_intercept!r}")
        check_int("verbose", self.verbose, min=0)
        if is_dask_array(X) or is_dask_array(y):
            if sample_weight is not None:
                raise TypeError("sample_weight must be None for Dask X or y, got weights")
            return self._fit_dask(X, y)
        X, y = validate_data(
            self, X, y, accept_sparse="csr", multi_output=True, y_numeric=True,
            dtype=[np.float64, np.float32],
        )
        alpha = check_float("alpha", self.alpha, min=0.0, min_exclusive=True)
        check_choice("solver", self.solver, ("auto", "cholesky", "cg"))
        _check_cg_params(self.tol, self.max_iter)
        device = _check_device(self.device)
        weight = _check_sample_weight(sample_weight, X.shape[0])
        progress = Progress(self.verbose, "KernelRidge.fit", total=2)
        self.features_ = self._features()
        progress("features", advance=0)
        Z = self.features_.fit_transform(X)
        y = np.asarray(y, dtype=np.float64)
        if not self.fit_intercept:
            self.intercept_ = np.zeros(y.shape[1:])
        elif weight is None:
            self.intercept_ = y.mean(axis=0)
        else:
            self.intercept_ = np.average(y, axis=0, weights=weight)
        r = y - self.intercept_
        if weight is not None:  # rows scaled by sqrt(s): the weighted least squares
            root = np.sqrt(weight)
            Z = sp.diags(root) @ Z if sp.issparse(Z) else np.asarray(Z) * root[:, None]
            r = r * (root if r.ndim == 1 else root[:, None])
        Zt = _as_torch_features(Z, device, torch.float64)
        yt = torch.as_tensor(r, dtype=torch.float64, device=device)
        progress("solve")
        w, self.n_iter_ = ridge_solve(
            Zt, yt, alpha, solver=self.solver, tol=self.tol, max_iter=self.max_iter,
            return_n_iter=True,
        )
        progress.close(f"{self.n_iter_} iterations")
        self.coef_ = w.cpu().numpy()
        if y.ndim == 1:
            self.intercept_ = float(self.intercept_)
        return self

    def _fit_dask(self, X, y):
        """``fit`` on Dask ``X`` and/or ``y``: the chunks' normal equations reduced on the Dask
        scheduler (:func:`kernelsketch.distributed.dask.normal_equations`), one solve here."""
        alpha = check_float("alpha", self.alpha, min=0.0, min_exclusive=True)
        check_choice("solver", self.solver, ("auto", "cholesky", "cg"))
        _check_cg_params(self.tol, self.max_iter)
        device = _check_device(self.device)
        features, gram, zty, zsum, ysum, n = normal_equations(self, X, y)
        mean = ysum / n if self.fit_intercept else np.zeros_like(ysum)
        rhs = torch.as_tensor(zty - np.outer(zsum, mean), dtype=torch.float64, device=device)
        G = torch.as_tensor(gram, dtype=torch.float64, device=device)
        if self.solver == "cg":
            w, n_iter = conjugate_gradient(lambda v: G @ v + alpha * v, rhs,
                                           preconditioner=G.diagonal() + alpha, tol=self.tol,
                                           max_iter=self.max_iter)
            n_iter = max(n_iter, 1)
        else:
            w, n_iter = gram_solve(G, rhs, alpha), 1
        self.features_, self.n_features_in_, self.n_iter_ = features, features.n_features_in_, n_iter
        w = w.cpu().numpy()
        if np.ndim(y) == 1:
            self.coef_, self.intercept_ = w[:, 0], float(mean[0])
        else:
            self.coef_, self.intercept_ = w, mean
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        features = self.features
        tags.input_tags.sparse = bool(
            features is not None and hasattr(features, "__sklearn_tags__")
            and features.__sklearn_tags__().input_tags.sparse)
        return tags

    def predict(self, X):
        """Predict ``features_.transform(X) @ coef_ + intercept_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_targets), float64
        """
        check_is_fitted(self, "coef_")
        if is_dask_array(X):  # a lazy Dask array, one task per row chunk
            return predict_kernel_ridge(self, X)
        X = validate_data(
            self, X, reset=False, accept_sparse="csr", dtype=[np.float64, np.float32]
        )
        Z = self.features_.transform(X)
        pred = Z @ self.coef_ if sp.issparse(Z) else np.asarray(Z, np.float64) @ self.coef_
        return np.asarray(pred) + self.intercept_
