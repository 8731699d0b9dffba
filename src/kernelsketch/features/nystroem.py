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

import functools
import math
import warnings
from collections.abc import Callable

import torch
from torch import nn

from kernelsketch._checks import (
    check_allocation,
    check_choice,
    check_float,
    check_int,
    check_tensor,
)
from kernelsketch.features._base import Progress, RandomFeaturesTransformer

__all__ = ["NystroemMap", "RLSNystroem", "pairwise_kernel", "recursive_rls_landmarks"]

KERNELS = ("rbf", "laplacian", "polynomial", "linear", "cosine")

# Landmarks sampled at the intermediate levels, as a share of n_components, and the size
# (same unit) below which the recursion stops (practical constants, not the paper's bounds;
# measured: docs/rls_nystroem.md). The scores of n points cost O(n s^2) for s landmarks,
# and the levels score at most 2n points in all: about the final map's O(n n_components^2).
_LEVEL_SHARE = 0.7
_BOTTOM_SHARE = 1.0
# Each level keeps a uniform quarter of the one above while that quarter is expected to hold
# at least the bottom size (the top level: 4 times it), else a half: fewer small levels,
# whose cost is per-level overhead (an eigh, the ridge search, ~100 small torch calls), not
# arithmetic. The top level's scores decide the final draw: a quarter of 6000 rows at
# n_components = 1024 raised fair's Gram error by 16% (measured: docs/rls_nystroem.md).
_SHRINK = 4
# Intermediate levels choose lambda for an effective dimension of their sample size over
# this factor, so that points of leverage ~1 are kept with probability 1.
_OVERSAMPLE = 2.0
# Rows per block of the kernel rows made and used at once (scores, the feature map on CPU).
_SCORE_ROWS = 2048
# Scores summing to more than this many times their target (the effective dimension each
# level's ridge aims at) are saturated: most are clamped at 1 and the draw is close to
# uniform. The ridge is then chosen where they sum to the target, from at most
# _RIDGE_ROWS rows of the level (measured: docs/rls_nystroem.md).
_SATURATED = 4.0
_RIDGE_ROWS = 1024
# A level's squared products (K_RS W V)^2 of the rows R = I \ S are kept for the check and the
# scores at the chosen ridge when they hold at most this many numbers (16 MB, within the
# fit's O(n m) bound; a choice, not tuned); above it the check's _RIDGE_ROWS rows are made
# separately and the scores take a second blockwise pass over the kernel rows.
_STORED = 2**21


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
        return _rbf_lifted(_rbf_lift(X, gamma, 0), _rbf_lift(Y, gamma, 1))
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


def _rbf_lift(X: torch.Tensor, gamma: float, side: int) -> torch.Tensor:
    """Rows ``[x, -gamma |x|^2, 1]`` (``side`` 0) or ``[2 gamma x, 1, -gamma |x|^2]`` (1),
    ``[n, d + 2]``: a row of each side has the product ``-gamma |x - y|^2``."""
    d = X.shape[-1]
    out = X.new_empty(X.shape[0], d + 2)
    sq = (X * X).sum(-1).mul_(-gamma)
    if side == 0:
        out[:, :d], out[:, d], out[:, d + 1] = X, sq, 1.0
    else:
        torch.mul(X, 2.0 * gamma, out=out[:, :d])
        out[:, d], out[:, d + 1] = 1.0, sq
    return out


def _rbf_lifted(XL: torch.Tensor, YL: torch.Tensor) -> torch.Tensor:
    """The rbf block from lifted rows (:func:`_rbf_lift`): one product, then in place (the
    exponent is ``<= 0`` up to rounding; 20% less time than a broadcast ``addmm`` and a
    subtraction at (10^4, 45))."""
    return torch.mm(XL, YL.mT).clamp_max_(0.0).exp_()


def _kernel_diag(X: torch.Tensor, kernel, **params) -> torch.Tensor:
    if kernel in ("rbf", "laplacian", "cosine"):
        return torch.ones(X.shape[0], dtype=X.dtype, device=X.device)
    if kernel == "linear":
        return (X * X).sum(-1)
    if kernel == "polynomial":
        gamma = 1.0 / X.shape[-1] if params["gamma"] is None else params["gamma"]
        return (gamma * (X * X).sum(-1) + params["coef0"]) ** params["degree"]
    return torch.stack([pairwise_kernel(x[None], x[None], kernel, **params)[0, 0] for x in X])


def _weighted_eigh(K_SS: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``W K_SS W = V diag(D) V^T`` (``D`` ascending, clamped at 0): one per level, for the
    auto ridge, the ridge for a total and the scores."""
    D, V = torch.linalg.eigh(w[:, None] * K_SS * w[None, :])
    return D.clamp_min(0.0), V


def _squared_products(rows: Callable[[torch.Tensor], torch.Tensor], positions: torch.Tensor,
                      right: torch.Tensor, reduce: bool = False) -> torch.Tensor:
    """``(K_iS right)^2`` [r, s] for the rows ``positions`` [r] of a kernel block
    (``rows(positions) -> K`` rows), or their row sums [r] (``reduce``): made and used
    ``_SCORE_ROWS`` rows at a time (in cache: about 3x faster than the whole block at
    ``n = 10^5``, and with ``reduce`` ``O(s)`` memory per row less)."""
    r = positions.numel()
    out = right.new_empty((r,) if reduce else (r, right.shape[1]))
    for start in range(0, r, _SCORE_ROWS):
        stop = min(r, start + _SCORE_ROWS)
        K = rows(positions[start:stop])
        if reduce:
            torch.sum((K @ right).square_(), 1, out=out[start:stop])
        else:
            torch.mm(K, right, out=out[start:stop]).square_()
    return out


def _own_scores(V2: torch.Tensor, w2: torch.Tensor, inv: torch.Tensor,
                lams: torch.Tensor | float) -> torch.Tensor:
    """The landmarks' left-one-out scores ``(1 / (lambda G_ii) - 1) / w_i^2`` [s, k] at the
    ridges ``lams`` [k] (or one float), ``G = (W K_SS W + lambda I)^-1``, from ``V2 = V^2``,
    ``w2 = w^2`` and ``inv = 1 / (D + lambda)`` [s, k]."""
    return torch.mm(V2, inv).mul_(lams).reciprocal_().sub_(1.0).div_(w2[:, None]).clamp_(0.0, 1.0)


def _ridge_scores(
    rows: Callable[[torch.Tensor], torch.Tensor], diag_I: torch.Tensor, members: torch.Tensor,
    eig: tuple[torch.Tensor, torch.Tensor], w: torch.Tensor, lam: float | None,
    total: float | None = None, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, float]:
    """Estimated ridge leverage scores of a set ``I`` from weighted landmarks ``S`` (Musco &
    Musco's estimator), and the ridge they were taken at.

    ``l_i = (k_ii - b_i^T A^-1 b_i) / lambda`` with ``A = W K_SS W + lambda I``,
    ``b_i = W K_Si``, through ``W K_SS W = V D V^T`` (``eig``, :func:`_weighted_eigh`):
    ``b_i^T A^-1 b_i = sum_j B_ij^2 / (D_j + lambda)``, ``B = K_IS W V`` (``rows(positions)``:
    kernel rows of ``I`` against ``S``, :func:`_squared_products`). ``members`` (positions in
    ``I`` of ``S``): their scores are left-one-out, ``b_i`` against ``S \\ {i}``:
    ``(1 / (lambda G_ii) - 1) / w_i^2`` with ``G = A^-1`` (the Schur complement; with ``i``
    among the landmarks the estimate is its leverage in the sample divided by ``w_i^2``,
    which under-states a sampled point of leverage ~1 by the factor ``p_i``), ``O(s^2)``:
    their kernel rows are not made.

    ``total`` given: ``lam``, unless the scores saturate there (``lam`` None, or their sum
    above ``_SATURATED * total``): then the ridge at which they sum to ``total`` (the first
    of a grid of 17 in ``log lambda``, refined three times: 0.7% in ``lambda``; the floor
    ``1e-8 mean k_ii`` if they never reach it). The sum is estimated from the landmarks'
    scores plus those of the rows ``R = I \\ S`` (at most ``_RIDGE_ROWS`` of them, drawn
    uniformly with ``generator``, scaled by ``|R| / _RIDGE_ROWS``), ``O((|R| + |S|) |S|)``
    per ridge from their squared ``B`` rows. Saturated scores (most clamped at 1) make a
    draw close to uniform: the auto ridge fell to its floor (``n <= 2 m``: the uniform half
    has no spectral tail to read; many duplicate rows, randhie). The squared ``B`` rows of
    all of ``R`` are kept when they hold at most ``_STORED`` numbers: the scores at the
    chosen ridge are then one product with them, without a second pass over the kernel.
    """
    D, V = eig
    n, s = len(diag_I), len(members)
    rest = torch.ones(n, dtype=torch.bool, device=diag_I.device)
    rest[members] = False
    R = rest.nonzero().squeeze(1)
    right = w[:, None] * V
    V2, w2 = V.square(), w.square()
    stored = None
    # The other points' scores min(1, max(0, k_ii - quad_i) / lambda) below are computed as
    # clamp(k_ii - quad_i, 0, lambda) / lambda (the same numbers).
    if total is not None:
        draw, scale = None, 1.0
        if R.numel() > _RIDGE_ROWS:
            scale = R.numel() / _RIDGE_ROWS
            draw = torch.randint(R.numel(), (_RIDGE_ROWS,), generator=generator).to(R.device)
        check = R if draw is None else R.index_select(0, draw)
        if R.numel() * s <= _STORED:
            stored = _squared_products(rows, R, right)
            B2 = stored if draw is None else stored.index_select(0, draw)
        else:
            B2 = _squared_products(rows, check, right)
        diag_R = diag_I.index_select(0, check)[:, None]

        def estimate(lams: torch.Tensor) -> torch.Tensor:  # the sum at each ridge of lams
            inv = (D[:, None] + lams).reciprocal_()
            quad = torch.mm(B2, inv)
            excess = torch.sub(diag_R, quad, out=quad).clamp_min_(0.0)
            excess = torch.minimum(excess, lams, out=excess).sum(0).div_(lams)
            return _own_scores(V2, w2, inv, lams).sum(0).add_(excess, alpha=scale)

        if lam is None or float(estimate(D.new_tensor([lam]))[0]) > _SATURATED * total:
            # every score is at most k_ii / lambda: the sum is below 1 at lambda = sum k_ii
            lo, hi = math.log(1e-8 * float(diag_I.mean())), math.log(float(diag_I.sum()))
            for _ in range(3):  # a grid of 17 in log lambda, three times: 16^-3 of the range
                grid = torch.linspace(lo, hi, 17, dtype=D.dtype, device=D.device)
                below = (estimate(grid.exp()) <= total).nonzero()
                k = int(below[0, 0]) if len(below) else 16
                lo, hi = float(grid[max(k - 1, 0)]), float(grid[k])
            lam = math.exp(hi)
    inv = (D + lam).reciprocal_()
    if stored is not None:
        quad = stored @ inv
    else:
        quad = _squared_products(rows, R, right * inv.sqrt(), reduce=True)
    scores = torch.empty_like(diag_I)
    quad = torch.sub(diag_I.index_select(0, R), quad, out=quad).clamp_(0.0, lam).div_(lam)
    scores.index_copy_(0, R, quad)
    scores.index_copy_(0, members, _own_scores(V2, w2, inv[:, None], lam)[:, 0])
    return scores, lam


def _auto_ridge(diag_child: torch.Tensor, D: torch.Tensor, s: int, scale: float) -> float:
    """Ridge = spectral tail after the top ``s`` eigenvalues, over ``s`` (Musco & Musco's fixed-size variant).

    ``W K_SS W`` (eigenvalues ``D``, ascending) approximates the kernel matrix of the set
    ``S`` was sampled from (whose diagonal is ``diag_child``); ``scale`` = |current set| /
    |that set| extrapolates its tail to the current set.
    """
    tail = float(diag_child.sum() - D[-s:].sum()) * scale
    mean_diag = float(diag_child.mean())
    return max(tail / s, 1e-8 * mean_diag)


def _inclusion_probabilities(weights: torch.Tensor, m: int) -> torch.Tensor:
    """``pi_i = min(1, a w_i)`` with ``sum pi = m`` (``a`` by water-filling), float64 [n]."""
    w = weights.double()
    pi = torch.zeros_like(w)
    free = torch.ones_like(w, dtype=torch.bool)
    budget = float(m)
    while budget > 0 and bool(free.any()):
        a = budget / float(w[free].sum())
        full = free & (a * w >= 1.0)
        if not bool(full.any()):
            pi[free] = a * w[free]
            return pi
        pi[full] = 1.0
        free &= ~full
        budget -= int(full.sum())
    return pi


def _systematic_sample(weights: torch.Tensor, m: int, generator) -> torch.Tensor:
    """Exactly ``m`` distinct indices, index ``i`` included with probability
    ``pi_i = min(1, a w_i)`` (:func:`_inclusion_probabilities`): systematic sampling of a
    random permutation (Madow 1949). Points with ``pi_i = 1`` are always included."""
    pi = _inclusion_probabilities(weights, m)
    perm = torch.randperm(len(pi), generator=generator)
    edges = torch.cumsum(pi[perm], 0)
    edges *= m / float(edges[-1])  # exactly m at the end despite rounding
    u = float(torch.rand(1, generator=generator, dtype=torch.float64))
    # unit i of the m points u, u + 1, ..., u + m - 1 falls in the interval of one index
    hits = torch.searchsorted(edges, torch.arange(m, dtype=torch.float64) + u, right=True)
    return perm[hits.clamp(max=len(pi) - 1)]


def recursive_rls_landmarks(
    X: torch.Tensor,
    n_components: int,
    *,
    kernel: str | Callable = "rbf",
    ridge: float | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[str], None] | None = None,
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
        effective dimension is about ``n_components``, or, where the scores saturate there
        (sum above ``_SATURATED`` times the target), where they sum to ``n_components / 2``.
    generator : torch.Generator, optional
    progress : callable, optional
        Called with a short description after each level (``verbose`` fits).

    Returns
    -------
    indices : int64 Tensor [n_components]
        Distinct landmark indices: systematic sampling with inclusion probabilities
        ``min(1, a * scores)`` summing to ``n_components`` (points whose estimated
        leverage is high are always kept).
    scores : Tensor [n]
        The estimated ridge leverage scores of all points (a landmark's own score
        left-one-out).

    Cost: ``O(n s (d + s))`` for ``s = 0.7 n_components`` landmarks per intermediate
    level (each level a uniform quarter of the one above, a half near the bottom: at most
    ``2 n`` points are scored in all), memory ``O(n s)``.
    """
    n = X.shape[0]
    params = {"gamma": kernel_params.get("gamma"), "degree": kernel_params.get("degree", 3),
                  "coef0": kernel_params.get("coef0", 1.0)}
    diag = _kernel_diag(X, kernel, **params)
    s_level = max(1, round(_LEVEL_SHARE * n_components))

    if kernel == "rbf":  # X lifted once: a block of kernel rows is one gather and one product
        gamma = 1.0 / X.shape[-1] if params["gamma"] is None else params["gamma"]
        XL = _rbf_lift(X, gamma, 0)

        def against(J):  # rows(idx) = k(X[idx], X[J])
            YL = _rbf_lift(X[J], gamma, 1)
            return lambda idx: _rbf_lifted(XL.index_select(0, idx), YL)
    else:
        def against(J):
            XJ = X[J]
            return lambda idx: pairwise_kernel(X.index_select(0, idx), XJ, kernel, **params)

    # Levels: the full set, then nested uniform quarters (halves near the bottom, _SHRINK)
    # until at most n_components remain.
    levels = [torch.arange(n, device=X.device)]
    bottom = _BOTTOM_SHARE * n_components
    while levels[-1].numel() > bottom:
        idx = levels[-1]
        enough = _SHRINK * bottom * (_SHRINK if len(levels) == 1 else 1)
        share = 1.0 / _SHRINK if idx.numel() >= enough else 0.5
        keep = torch.rand(idx.numel(), generator=generator, dtype=torch.float64) < share
        if not bool(keep.any()):  # tiny n_components: the level itself is the bottom
            break
        levels.append(idx[keep.to(idx.device)])
    S = levels[-1]
    w = torch.ones(S.numel(), dtype=X.dtype, device=X.device)

    def level_scores(I, S, w, ridge, total):
        """Scores of ``I`` from the landmarks ``S`` at ``ridge`` (a float, or a function of the
        eigenvalues of ``W K_SS W``), or where they sum to ``total`` if they saturate
        (:func:`_ridge_scores`)."""
        rows = against(S)
        eig = _weighted_eigh(rows(S), w)
        lam = ridge(eig[0]) if callable(ridge) else ridge
        return _ridge_scores(lambda positions: rows(I.index_select(0, positions)), diag[I],
                             torch.searchsorted(I, S), eig, w, lam, total, generator)[0]

    for depth in range(len(levels) - 2, 0, -1):
        I = levels[depth]
        child = levels[depth + 1]  # the uniform part of I that S was sampled from
        target = max(1, round(s_level / _OVERSAMPLE))
        auto = functools.partial(_auto_ridge, diag[child], s=target,
                                 scale=I.numel() / child.numel())
        scores = level_scores(I, S, w, auto, target)
        p = (s_level * scores / scores.sum().clamp_min(1e-300)).clamp(max=1.0)
        pick = torch.rand(I.numel(), generator=generator, dtype=torch.float64).to(p.device) < p
        pick = (pick | (p >= 1.0)).nonzero().squeeze(1)
        S, w = I.index_select(0, pick), p.index_select(0, pick).rsqrt_()
        if progress is not None:
            progress(f"level {depth}: {I.numel()} points, {S.numel()} landmarks")
    # Top level: scores of every point from the last weighted landmark set.
    I = levels[0]
    child = levels[1] if len(levels) > 1 else levels[0]
    if ridge is not None:
        scores = level_scores(I, S, w, ridge, None)
    elif len(levels) == 2:  # S is the uniform part itself: no tail to read
        scores = level_scores(I, S, w, None, n_components / _OVERSAMPLE)
    else:
        auto = functools.partial(_auto_ridge, diag[child], s=n_components,
                                 scale=n / child.numel())
        scores = level_scores(I, S, w, auto, n_components / _OVERSAMPLE)
    probs = scores.clamp_min(1e-12 * float(scores.max().clamp_min(1e-300)))
    indices = _systematic_sample(probs.cpu(), n_components, generator)
    if progress is not None:
        progress(f"top level: {n} points scored")
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
        L, N = self.landmarks.to(work), self.normalization.to(work)
        flat = x.reshape(-1, x.shape[-1]).to(work)
        if flat.is_cuda or len(flat) <= _SCORE_ROWS:
            z = self._k(flat, L) @ N
        else:  # blocks of rows: each kernel block used while in cache, no (n, s) temporary
            z = torch.empty(len(flat), self.d_out, dtype=work)
            for start in range(0, len(flat), _SCORE_ROWS):
                rows = slice(start, start + _SCORE_ROWS)
                torch.mm(self._k(flat[rows], L), N, out=z[rows])
        return z.reshape(*lead, self.d_out).to(dtype)


class RLSNystroem(RandomFeaturesTransformer):
    """Nyström kernel features with landmarks sampled by recursive ridge leverage scores.

    A drop-in for :class:`sklearn.kernel_approximation.Nystroem` whose landmarks
    are sampled in proportion to ridge leverage scores (RecursiveRLS-Nyström)
    instead of uniformly: clusters of few points and outliers, which uniform
    sampling misses, get landmarks. ``transform(X) @ transform(Y).T =
    K_XL K_LL^+ K_LY`` never exceeds ``K`` (in the PSD order) and
    ``K - K~ <= eps * lambda * I`` with ``n_components ~ d_lambda log d_lambda / eps``
    (Musco & Musco 2017). ``fit`` costs ``O(n m (d + m))`` for ``m = n_components``
    (0.66-1.48x scikit-learn's ``Nystroem.fit_transform`` on the shipped data, 2.20x at
    10^4 standard-normal rows with m = 64, BENCHMARKS.md).

    Memory: ``fit`` holds ``O(n m)`` (the kernel between the rows of a level and its
    ``0.7 m`` landmarks, float64) and the ``(m, d)`` landmarks and ``(m, m)`` normalisation;
    ``transform`` ``O(n m)``: the ``(n, m)`` kernel block and the output. The input is copied
    to float64 when it is float32.

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
        after the top ``n_components`` eigenvalues over ``n_components``, raised to where the
        estimated scores sum to ``n_components / 2`` when they saturate (duplicate rows,
        ``n <= 2 n_components``; docs/rls_nystroem.md).
    random_state : int, RandomState or None
    verbose : int, default 0
        ``>= 1``: the recursion's levels on a tqdm bar (tqdm installed) or stderr.

    ``n_components`` above the number of training rows gives a warning and as many
    landmarks as rows (the output width is then ``n_samples``, as scikit-learn's
    ``Nystroem`` does).

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
        verbose: int = 0,
    ):
        self.n_components = n_components
        self.kernel = kernel
        self.gamma = gamma
        self.degree = degree
        self.coef0 = coef0
        self.ridge = ridge
        self.random_state = random_state
        self.verbose = verbose

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
        check_int("verbose", self.verbose, min=0)

    def _make_feature_map(self, n_features, generator, X):
        n = X.shape[0]
        s = min(self.n_components, n)
        if self.n_components > n:
            warnings.warn(f"n_components={self.n_components} is larger than the {n} training "
                          f"rows: using {n} landmarks (n_features_out = {n})", UserWarning,
                          stacklevel=4)
        check_allocation(8.0 * n * (s + n_features),
                         f"the (n_samples, n_components) = ({n}, {s}) kernel block of "
                         "RLSNystroem.fit", "fit on fewer rows or use fewer n_components")
        Xd = X.to(torch.float64)
        params = {"gamma": self.gamma, "degree": self.degree, "coef0": self.coef0}
        progress = Progress(self.verbose, "RLSNystroem.fit")
        idx, scores = recursive_rls_landmarks(
            Xd, s, kernel=self.kernel, ridge=self.ridge, generator=generator,
            progress=progress, **params
        )
        fmap = NystroemMap(Xd[idx], self.kernel, **params)
        progress.close(f"{s} landmarks")
        self.landmark_indices_ = idx.numpy()
        self.leverage_scores_ = scores.numpy()
        return fmap
