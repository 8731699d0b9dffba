"""Nyström features with landmarks sampled by recursive ridge leverage scores (any kernel).

:class:`RLSNystroem` maps X (n, d) to ``phi(x) = k(x, L) K_LL^{-1/2}`` [n_components]
for landmarks ``L`` sampled in proportion to estimated ``lambda``-ridge leverage
scores by RecursiveRLS-Nyström (Musco & Musco, NeurIPS 2017), with ``O(n s)``
kernel evaluations and ``O(n s^2)`` time. Guarantee (their main theorem): with
``O(d_lambda log d_lambda)`` landmarks, ``K~ <= K <= K~ + eps lambda I`` for
``K~ = phi(X) phi(X)^T``.

Theory (the recursive estimator, the choice of ``lambda``, constants):
docs/rls_nystroem.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kernelsketch._checks import check_choice, check_float, check_int, check_tensor
from kernelsketch.features._base import RandomFeaturesTransformer

__all__ = ["NystroemMap", "RLSNystroem", "pairwise_kernel", "recursive_rls_landmarks"]

KERNELS = ("rbf", "laplacian", "polynomial", "linear", "cosine")

# Oversampling factor of the intermediate levels (a practical constant, not the paper's bound).
_OVERSAMPLE = 2.0


def pairwise_kernel(
    X: torch.Tensor,
    Y: torch.Tensor,
    kernel: str | Callable = "rbf",
    *,
    gamma: float | None = None,
    degree: int = 3,
    coef0: float = 1.0,
) -> torch.Tensor:
    """Kernel matrix ``k(X, Y)`` in torch, scikit-learn's parametrisation.

    Parameters
    ----------
    X : Tensor [n, d]; Y : Tensor [m, d] (same dtype and device)
    kernel : {"rbf", "laplacian", "polynomial", "linear", "cosine"} or callable
        rbf ``exp(-gamma ||x-y||^2)``; laplacian ``exp(-gamma ||x-y||_1)``;
        polynomial ``(gamma <x,y> + coef0)^degree``; linear ``<x,y>``; cosine
        ``<x,y>/(|x||y|)``. A callable gets ``(X, Y)`` tensors and returns ``[n, m]``.
    gamma : float, optional
        Default ``1 / d``.

    Returns
    -------
    Tensor [n, m]
    """
    if callable(kernel):
        return kernel(X, Y)
    gamma = 1.0 / X.shape[-1] if gamma is None else gamma
    if kernel == "rbf":
        sq = (X * X).sum(-1)[:, None] + (Y * Y).sum(-1)[None, :] - 2.0 * X @ Y.mT
        return torch.exp(-gamma * sq.clamp_min(0.0))
    if kernel == "laplacian":
        return torch.exp(-gamma * torch.cdist(X, Y, p=1.0))
    if kernel == "polynomial":
        return (gamma * (X @ Y.mT) + coef0) ** degree
    if kernel == "linear":
        return X @ Y.mT
    if kernel == "cosine":
        Xn = X / X.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(X.dtype).tiny)
        Yn = Y / Y.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(Y.dtype).tiny)
        return Xn @ Yn.mT
    raise ValueError(f"kernel must be one of {KERNELS} or a callable, got {kernel!r}")


def _kernel_diag(X: torch.Tensor, kernel, **params) -> torch.Tensor:
    if kernel in ("rbf", "laplacian", "cosine"):
        return torch.ones(X.shape[0], dtype=X.dtype, device=X.device)
    if kernel == "linear":
        return (X * X).sum(-1)
    if kernel == "polynomial":
        gamma = 1.0 / X.shape[-1] if params["gamma"] is None else params["gamma"]
        return (gamma * (X * X).sum(-1) + params["coef0"]) ** params["degree"]
    return torch.stack([pairwise_kernel(x[None], x[None], kernel, **params)[0, 0] for x in X])


def _ridge_scores(
    K_IS: torch.Tensor, K_SS: torch.Tensor, diag_I: torch.Tensor, w: torch.Tensor, lam: float
) -> torch.Tensor:
    """Estimated ridge leverage scores from weighted landmarks (Musco & Musco's estimator)."""
    A = w[:, None] * K_SS * w[None, :]
    A = A + lam * torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    B = K_IS * w[None, :]
    L = torch.linalg.cholesky(A)
    C = torch.linalg.solve_triangular(L, B.mT, upper=False)  # [s, n]; ||C_i||^2 = quad. form
    resid = diag_I - (C * C).sum(0)
    return (resid.clamp_min(0.0) / lam).clamp(max=1.0)


def _auto_ridge(diag_child: torch.Tensor, K_SS: torch.Tensor, w: torch.Tensor, s: int,
                scale: float) -> float:
    """Ridge = spectral tail after the top ``s`` eigenvalues, over ``s`` (Musco & Musco's fixed-size variant).

    ``W K_SS W`` approximates the kernel matrix of the set ``S`` was sampled from
    (whose diagonal is ``diag_child``); ``scale`` = |current set| / |that set|
    extrapolates its tail to the current set.
    """
    eig = torch.linalg.eigvalsh(w[:, None] * K_SS * w[None, :]).clamp_min(0.0)
    tail = float(diag_child.sum() - eig.flip(0)[:s].sum()) * scale
    mean_diag = float(diag_child.mean())
    return max(tail / s, 1e-8 * mean_diag)


def recursive_rls_landmarks(
    X: torch.Tensor,
    n_components: int,
    *,
    kernel: str | Callable = "rbf",
    ridge: float | None = None,
    generator: torch.Generator | None = None,
    **kernel_params,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample landmark indices by recursive ridge-leverage-score sampling.

    Parameters
    ----------
    X : Tensor [n, d], float
    n_components : int
        Number of landmarks (``<= n``).
    kernel, kernel_params : see :func:`pairwise_kernel`
    ridge : float, optional
        ``lambda`` of the final scores; default: chosen from the spectrum so the
        effective dimension is about ``n_components``.
    generator : torch.Generator, optional

    Returns
    -------
    indices : int64 Tensor [n_components]
        Distinct landmark indices, drawn without replacement with
        probability proportional to the estimated ridge leverage scores.
    scores : Tensor [n]
        The estimated ridge leverage scores of all points.
    """
    n = X.shape[0]
    params = {"gamma": kernel_params.get("gamma"), "degree": kernel_params.get("degree", 3),
                  "coef0": kernel_params.get("coef0", 1.0)}
    diag = _kernel_diag(X, kernel, **params)

    def kmat(I, J):
        return pairwise_kernel(X[I], X[J], kernel, **params)

    # Levels: the full set, then nested uniform halves until at most n_components remain.
    levels = [torch.arange(n, device=X.device)]
    while levels[-1].numel() > 2 * n_components:
        idx = levels[-1]
        keep = torch.rand(idx.numel(), generator=generator, dtype=torch.float64) < 0.5
        levels.append(idx[keep.to(idx.device)])
    S = levels[-1]
    w = torch.ones(S.numel(), dtype=X.dtype, device=X.device)
    for depth in range(len(levels) - 2, 0, -1):
        I = levels[depth]
        child = levels[depth + 1]  # the uniform half of I that S was sampled from
        K_SS, K_IS = kmat(S, S), kmat(I, S)
        lam = _auto_ridge(diag[child], K_SS, w, n_components, I.numel() / child.numel())
        scores = _ridge_scores(K_IS, K_SS, diag[I], w, lam)
        p = (_OVERSAMPLE * n_components * scores / scores.sum().clamp_min(1e-300)).clamp(max=1.0)
        pick = torch.rand(I.numel(), generator=generator, dtype=torch.float64).to(p.device) < p
        pick = pick | (p >= 1.0)
        S, w = I[pick], 1.0 / p[pick].sqrt()
    # Top level: scores of every point from the last weighted landmark set.
    I = levels[0]
    child = levels[1] if len(levels) > 1 else levels[0]
    K_SS, K_IS = kmat(S, S), kmat(I, S)
    if ridge is None:
        lam = _auto_ridge(diag[child], K_SS, w, n_components, n / child.numel())
    else:
        lam = ridge
    scores = _ridge_scores(K_IS, K_SS, diag, w, lam)
    probs = scores.clamp_min(1e-12 * float(scores.max().clamp_min(1e-300)))
    indices = torch.multinomial(probs.cpu(), n_components, replacement=False, generator=generator)
    return indices.to(X.device), scores


class NystroemMap(nn.Module):
    """Nyström feature map ``phi(x) = k(x, L) K_LL^{-1/2}`` (pseudo-inverse square root).

    Parameters
    ----------
    landmarks : Tensor [s, d]
    kernel, gamma, degree, coef0 : see :func:`pairwise_kernel`
    rcond : float, default 1e-10
        Eigenvalues of ``K_LL`` below ``rcond * max`` are dropped (rank-aware).

    ``phi(X) phi(Y)^T = K_XL K_LL^+ K_LY``; ``forward`` takes ``[..., d]`` of any
    float dtype/device (after ``.to``) and returns ``[..., s]`` in the input dtype.
    """

    def __init__(self, landmarks: torch.Tensor, kernel="rbf", *, gamma=None, degree=3,
                 coef0=1.0, rcond: float = 1e-10):
        super().__init__()
        self.kernel, self.gamma, self.degree, self.coef0 = kernel, gamma, degree, coef0
        self.register_buffer("landmarks", landmarks)
        K = self._k(landmarks, landmarks)
        evals, evecs = torch.linalg.eigh((K + K.mT) / 2)
        keep = evals > rcond * evals.max().clamp_min(torch.finfo(K.dtype).tiny)
        inv_sqrt = torch.where(keep, evals.clamp_min(torch.finfo(K.dtype).tiny).rsqrt(), 0.0)
        self.register_buffer("normalization", (evecs * inv_sqrt) @ evecs.mT)
        self.d_out = landmarks.shape[0]

    def _k(self, X, Y):
        return pairwise_kernel(X, Y, self.kernel, gamma=self.gamma, degree=self.degree,
                               coef0=self.coef0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x)
        if x.dim() == 0 or x.shape[-1] != self.landmarks.shape[1]:
            raise ValueError(f"x must have {self.landmarks.shape[1]} features in its last "
                             f"dimension, got shape {list(x.shape)}")
        dtype = x.dtype
        # float64 inside for low-precision inputs: squared distances of finite float32 inputs
        # (|x| ~ 1e20) overflow float32, while the kernel values are finite.
        work = torch.float64 if dtype != torch.float64 and not x.is_cuda else dtype
        work = torch.float32 if x.is_cuda and dtype in (torch.float16, torch.bfloat16) else work
        lead = x.shape[:-1]
        L = self.landmarks.to(work)
        z = self._k(x.reshape(-1, x.shape[-1]).to(work), L) @ self.normalization.to(work)
        return z.reshape(*lead, self.d_out).to(dtype)


class RLSNystroem(RandomFeaturesTransformer):
    """Nyström kernel features with landmarks sampled by recursive ridge leverage scores.

    A drop-in for :class:`sklearn.kernel_approximation.Nystroem` whose landmarks
    are sampled in proportion to ridge leverage scores (RecursiveRLS-Nyström)
    instead of uniformly: clusters of few points and outliers, which uniform
    sampling misses, get landmarks. ``transform(X) @ transform(Y).T =
    K_XL K_LL^+ K_LY`` never exceeds ``K`` (in the PSD order) and
    ``K - K~ <= eps * lambda * I`` with ``n_components ~ d_lambda log d_lambda / eps``
    (Musco & Musco 2017). Costs ``O(n s)`` kernel evaluations and
    ``O(n s^2)`` time.

    Parameters
    ----------
    n_components : int, default 100
        Number of landmarks = output features (at most ``n_samples``).
    kernel : {"rbf", "laplacian", "polynomial", "linear", "cosine"} or callable, default "rbf"
        A callable takes two torch tensors ``[n, d], [m, d]`` and returns ``[n, m]``.
    gamma : float, optional
        Kernel scale (default ``1 / n_features``), as in scikit-learn.
    degree : int, default 3
    coef0 : float, default 1.0
    ridge : float, optional
        ``lambda`` of the final leverage scores; default: the spectral tail
        after the top ``n_components`` eigenvalues over ``n_components``.
    random_state : int, RandomState or None

    Attributes
    ----------
    feature_map_ : NystroemMap
        Torch map; ``feature_map_.to("cuda")`` for GPU batches.
    landmark_indices_ : ndarray of shape (n_components,)
        Rows of the training data used as landmarks.
    leverage_scores_ : ndarray of shape (n_samples,)
        Estimated ridge leverage scores of the training points.

    References
    ----------
    C. Musco, C. Musco. "Recursive Sampling for the Nyström Method", NeurIPS 2017.
    """

    def __init__(
        self,
        *,
        n_components: int = 100,
        kernel="rbf",
        gamma: float | None = None,
        degree: int = 3,
        coef0: float = 1.0,
        ridge: float | None = None,
        random_state=None,
    ):
        self.n_components = n_components
        self.kernel = kernel
        self.gamma = gamma
        self.degree = degree
        self.coef0 = coef0
        self.ridge = ridge
        self.random_state = random_state

    def _check_params(self, n_features: int) -> None:
        check_int("n_components", self.n_components, min=1)
        if not callable(self.kernel):
            check_choice("kernel", self.kernel, KERNELS)
        if self.gamma is not None:
            check_float("gamma", self.gamma, min=0.0, min_exclusive=True)
        check_int("degree", self.degree, min=1)
        check_float("coef0", self.coef0)
        if self.ridge is not None:
            check_float("ridge", self.ridge, min=0.0, min_exclusive=True)

    def _make_feature_map(self, n_features, generator, X):
        n = X.shape[0]
        s = min(self.n_components, n)
        Xd = X.to(torch.float64)
        params = {"gamma": self.gamma, "degree": self.degree, "coef0": self.coef0}
        idx, scores = recursive_rls_landmarks(
            Xd, s, kernel=self.kernel, ridge=self.ridge, generator=generator, **params
        )
        self.landmark_indices_ = idx.numpy()
        self.leverage_scores_ = scores.numpy()
        return NystroemMap(Xd[idx], self.kernel, **params)
