"""Statistical leverage scores of the rows of a matrix: exact, ridge, from a Gram matrix, sketched.

For ``A`` [n, d], the leverage score of row ``i`` is ``τ_i = a_i (AᵀA)^+ a_iᵀ``,
the squared norm of row ``i`` of any orthonormal basis of the column space of
``A``; ``0 <= τ_i <= 1`` and ``sum_i τ_i = rank(A)``. Sampling rows with
probability ``∝ τ_i`` gives subspace embeddings and spectral approximations;
LevAttention (arXiv 2410.05462) keeps the keys of large leverage.

Every function is batched over the leading dimensions of ``A`` [..., n, d],
computes in float32 for half dtypes (the input dtype otherwise) and returns
scores [..., n] in the dtype of ``A``. Theory: docs/sketches.md.
"""

from __future__ import annotations

import math

import torch

from kernelsketch._checks import (
    FLOAT_DTYPES,
    _shape,
    check_allocation,
    check_choice,
    check_float,
    check_generator,
    check_int,
    check_same,
    check_tensor,
)
from kernelsketch.sketch.projections import SRHT, CountSketch, GaussianSketch, compute_dtype

__all__ = [
    "leverage_scores",
    "leverage_scores_from_gram",
    "leverage_scores_from_kernel",
    "ridge_leverage_scores",
    "sketched_leverage_scores",
]


def _check_matrix(name: str, a: torch.Tensor) -> torch.Tensor:
    check_tensor(name, a, dtypes=FLOAT_DTYPES)
    if a.dim() < 2:
        raise ValueError(f"{name} must have shape [..., n, d], got shape {_shape(a)}")
    return a.to(compute_dtype(a.dtype))


def _unit_scaled(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` [..., n, d] scaled per matrix by a power of two ``2^-e`` so its largest
    magnitude is in [1/2, 1), and ``e`` [..., 1, 1] (int; 0 for a zero matrix).

    Exact (in two steps, so neither factor over- or underflows): leverage scores are
    scale-free, and ``A`` of 1e30 in float32 no longer overflows ``AᵀA`` or the SVD.
    """
    e = torch.frexp(t.abs().amax(dim=(-2, -1), keepdim=True)).exponent
    half = torch.div(e, 2, rounding_mode="floor")
    return torch.ldexp(torch.ldexp(t, -half), half - e), e


def _scaled_ridge(ridge: float, e: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``ridge · 2^-e`` [..., 1] in ``dtype`` (0 or inf where it leaves the range: the
    exact limits of the scores)."""
    r = torch.ldexp(torch.tensor(ridge, dtype=torch.float64), -e.to(torch.float64))
    return r.to(dtype).squeeze(-1)


def _keep(values: torch.Tensor, rcond: float | None, default: float) -> torch.Tensor:
    """Mask of ``values`` [..., k] (non-negative) above ``rcond * max(values)``."""
    rcond = default if rcond is None else check_float("rcond", rcond, min=0.0, max=1.0)
    top = values.amax(-1, keepdim=True)
    return (values > rcond * top) & (top > 0)


def leverage_scores(A: torch.Tensor, *, rcond: float | None = None) -> torch.Tensor:
    """Exact, rank-aware leverage scores of the rows of ``A``.

    ``τ_i = ‖U_i‖²`` for ``U`` the left singular vectors of ``A`` whose
    singular values exceed ``rcond * σ_max``, so ``sum_i τ_i = rank(A)``
    (the numerical rank at that tolerance). Time ``O(n d min(n, d))``.

    Parameters
    ----------
    A : Tensor [..., n, d], float
    rcond : float in [0, 1], optional
        Relative rank tolerance; default ``max(n, d) * eps(dtype)`` (as
        ``numpy.linalg.matrix_rank``).

    Returns
    -------
    Tensor [..., n], dtype of ``A``; entries in [0, 1].
    """
    a, _ = _unit_scaled(_check_matrix("A", A))
    u, s, _ = torch.linalg.svd(a, full_matrices=False)
    keep = _keep(s, rcond, max(a.shape[-2:]) * torch.finfo(a.dtype).eps)
    return (u.square() * keep.unsqueeze(-2)).sum(-1).to(A.dtype)


def ridge_leverage_scores(A: torch.Tensor, lam: float) -> torch.Tensor:
    """Ridge leverage scores ``τ_i(λ) = a_i (AᵀA + λ I)^{-1} a_iᵀ``.

    Computed stably from the SVD ``A = U Σ Vᵀ`` as
    ``sum_k U_ik² σ_k² / (σ_k² + λ)``; their sum is the statistical dimension
    ``sum_k σ_k² / (σ_k² + λ)``.

    Parameters
    ----------
    A : Tensor [..., n, d], float
    lam : float > 0
        Ridge ``λ`` (for ``λ = 0`` use :func:`leverage_scores`).

    Returns
    -------
    Tensor [..., n], dtype of ``A``; entries in [0, 1).

    References
    ----------
    Alaoui, Mahoney. Fast randomized kernel ridge regression with statistical
    guarantees, NeurIPS 2015.
    """
    a, e = _unit_scaled(_check_matrix("A", A))
    lam = check_float("lam", lam, min=0.0, min_exclusive=True)
    u, s, _ = torch.linalg.svd(a, full_matrices=False)
    s2 = s.square()
    # where the scaled ridge underflows, a zero singular value would give 0 / 0
    weight = torch.where(s2 > 0, s2 / (s2 + _scaled_ridge(lam, 2 * e, a.dtype)), 0.0)
    return (u.square() * weight.unsqueeze(-2)).sum(-1).to(A.dtype)


def leverage_scores_from_gram(
    A: torch.Tensor,
    gram: torch.Tensor,
    *,
    ridge: float = 0.0,
    rcond: float | None = None,
) -> torch.Tensor:
    """Scores ``a_i (G + ridge I)^+ a_iᵀ`` of the rows of ``A`` against a given Gram matrix.

    With ``G = AᵀA`` these are the leverage scores of ``A``; with ``G`` the
    Gram matrix of a larger set of rows accumulated in a stream (``G += BᵀB``
    per block ``B``), they are the leverage scores of the rows of ``A`` within
    that set — the streaming key selection of LevAttention. With
    ``ridge = 0`` the pseudo-inverse drops eigenvalues of ``G`` below
    ``rcond * λ_max`` (rank-aware).

    Parameters
    ----------
    A : Tensor [..., n, d], float
    gram : Tensor [..., d, d], symmetric positive semi-definite, same dtype
        and device as ``A``; leading dimensions broadcast against ``A``'s.
    ridge : float >= 0, default 0
    rcond : float in [0, 1], optional
        Relative eigenvalue tolerance for ``ridge = 0``; default
        ``10 * d * eps(dtype)`` (eigenvalues of a Gram matrix are only
        resolved to ``O(eps * λ_max)``). Ignored when ``ridge > 0``.

    Returns
    -------
    Tensor [..., n], dtype of ``A``.
    """
    a = _check_matrix("A", A)
    check_tensor("gram", gram, dtypes=FLOAT_DTYPES)
    check_same(("A", "gram"), (A, gram))
    d = a.shape[-1]
    if gram.dim() < 2 or gram.shape[-2:] != (d, d):
        raise ValueError(
            f"gram must have shape [..., {d}, {d}] (d from A {_shape(A)}), got shape {_shape(gram)}"
        )
    ridge = check_float("ridge", ridge, min=0.0)
    # scale-free: A by 2^-h and G by 4^-h, h from G's largest entry, keep the scores
    _, e = _unit_scaled(gram.to(a.dtype))
    h = torch.div(e + 1, 2, rounding_mode="floor")
    g = torch.ldexp(torch.ldexp(gram.to(a.dtype), -h), -h)
    a = torch.ldexp(a, -h)
    evals, evecs = torch.linalg.eigh((g + g.transpose(-1, -2)) / 2)
    evals = evals.clamp_min(0)
    if ridge > 0:
        shifted = evals + _scaled_ridge(ridge, 2 * h, a.dtype)
        inverse = torch.where(shifted > 0, 1.0 / shifted, 0.0)  # 0 where the ridge underflows
    else:
        keep = _keep(evals, rcond, 10 * d * torch.finfo(a.dtype).eps)
        inverse = torch.where(keep, 1.0 / torch.where(keep, evals, 1.0), 0.0)
    proj = a @ evecs
    return (proj.square() * inverse.unsqueeze(-2)).sum(-1).to(A.dtype)


def leverage_scores_from_kernel(
    kernel: torch.Tensor,
    *,
    ridge: float = 0.0,
    rcond: float | None = None,
) -> torch.Tensor:
    """Leverage scores of the feature rows ``φ(x_i)`` given only their kernel matrix ``ΦΦᵀ``.

    ``τ_i = [Kₙ (Kₙ + ridge I)^+]_ii`` for ``Kₙ = ΦΦᵀ`` [n, n]: the leverage
    scores of ``Φ`` (``ridge = 0``, rank-aware) or its ridge leverage scores,
    without forming the features — the cheaper route when ``n`` is below the
    feature dimension (e.g. ``Φ = K^{⊗t}``, ``Kₙ = (KKᵀ)^{∘t}``). From the
    eigendecomposition ``Kₙ = U Λ Uᵀ``, ``τ_i = sum_k U_ik² λ_k / (λ_k + ridge)``
    over the eigenvalues kept (above ``rcond * λ_max`` when ``ridge = 0``).
    Time ``O(n³)``, memory ``O(n²)``.

    Parameters
    ----------
    kernel : Tensor [..., n, n], symmetric positive semi-definite, float
    ridge : float >= 0, default 0
    rcond : float in [0, 1], optional
        Relative eigenvalue tolerance for ``ridge = 0``; default
        ``10 * n * eps(dtype)``. Ignored when ``ridge > 0``.

    Returns
    -------
    Tensor [..., n], dtype of ``kernel``; entries in [0, 1].
    """
    g = _check_matrix("kernel", kernel)
    n = g.shape[-1]
    if g.shape[-2] != n:
        raise ValueError(f"kernel must have shape [..., n, n], got shape {_shape(kernel)}")
    ridge = check_float("ridge", ridge, min=0.0)
    g, e = _unit_scaled(g)
    evals, evecs = torch.linalg.eigh((g + g.transpose(-1, -2)) / 2)
    evals = evals.clamp_min(0)
    if ridge > 0:
        weight = torch.where(evals > 0, evals / (evals + _scaled_ridge(ridge, e, g.dtype)), 0.0)
    else:
        weight = _keep(evals, rcond, 10 * n * torch.finfo(g.dtype).eps).to(g.dtype)
    return (evecs.square() * weight.unsqueeze(-2)).sum(-1).to(kernel.dtype)


def sketched_leverage_scores(
    A: torch.Tensor,
    *,
    sketch_size: int,
    jl_size: int | None = None,
    sketch: str = "srht",
    rcond: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fast approximate leverage scores (Drineas, Magdon-Ismail, Mahoney, Woodruff).

    1. Sketch the rows: ``ΠA`` [sketch_size, d] with an SRHT (or CountSketch)
       acting on the ``n`` rows (one draw shared by all batch entries).
    2. Orthogonalize: ``ΠA = W Σ Vᵀ``; ``R^{-1} = V Σ^{-1}`` restricted to
       singular values above ``rcond * σ_max`` (the thin SVD replaces the
       paper's QR so rank-deficient ``A`` is handled; same ``O(s d²)`` cost).
    3. Optionally multiply ``R^{-1}`` on the right by a Gaussian JL map
       [rank, jl_size] (the paper's ``Π₂``, step 3 of Algorithm 1).
    4. ``τ̃_i = ‖a_i R^{-1} Π₂‖²``.

    If ``Π`` is a subspace embedding with distortion ``ε`` for the column
    space of ``A`` (``sketch_size = O(d log n / ε²)`` for SRHT,
    ``O(d² / ε²)`` for CountSketch), then ``|τ̃_i − τ_i| <= O(ε) τ_i`` for all
    ``i`` without JL; the JL step adds relative error
    ``O(sqrt(log n / jl_size))`` and brings the time to
    ``O(n d log n + s d² + n d jl_size)``.

    Parameters
    ----------
    A : Tensor [..., n, d], float
    sketch_size : int >= min(n, d)
        Rows of ``ΠA``.
    jl_size : int, optional
        Columns of the right JL map; ``None`` skips it (exact ``‖a_i R^{-1}‖²``).
    sketch : {"srht", "countsketch"}, default "srht"
    rcond : float in [0, 1], optional
        Relative rank tolerance on ``ΠA``'s singular values; default
        ``max(sketch_size, d) * eps``.
    generator : torch.Generator, optional
        Source of the row sketch and the JL map (one draw shared by all batch
        entries, made on the generator's device and moved to ``A``'s);
        ``None`` uses torch's global generator.

    Returns
    -------
    Tensor [..., n], dtype of ``A``.

    References
    ----------
    Drineas, Magdon-Ismail, Mahoney, Woodruff. Fast approximation of matrix
    coherence and statistical leverage, JMLR 13, 2012 (Algorithm 1).
    """
    a, _ = _unit_scaled(_check_matrix("A", A))
    n, d = a.shape[-2:]
    check_int("sketch_size", sketch_size, min=1)
    if sketch_size < min(n, d):
        raise ValueError(
            f"sketch_size must be >= min(n, d) = {min(n, d)} for A of shape {_shape(A)} "
            f"(a subspace embedding needs at least rank(A) rows), got {sketch_size}"
        )
    if jl_size is not None:
        check_int("jl_size", jl_size, min=1)
    check_choice("sketch", sketch, ("srht", "countsketch"))
    check_generator(generator)
    batch = math.prod(a.shape[:-2])
    check_allocation(  # the sketched rows (padded for the SRHT) and the final product
        16.0 * batch * d * (sketch_size + n) + 8.0 * batch * n * (jl_size or d),
        f"the sketch of A of shape {_shape(A)} with sketch_size={sketch_size} and "
        f"jl_size={jl_size}",
    )
    g = generator
    row_sketch = (SRHT if sketch == "srht" else CountSketch)(n, sketch_size, generator=g)
    sa = row_sketch.to(a.device)._sketch(a.transpose(-1, -2)).transpose(-1, -2)
    _, s, vh = torch.linalg.svd(sa, full_matrices=False)
    keep = _keep(s, rcond, max(sketch_size, d) * torch.finfo(a.dtype).eps)
    r_inv = vh.transpose(-1, -2) * torch.where(keep, 1.0 / torch.where(keep, s, 1.0), 0.0).unsqueeze(-2)
    if jl_size is not None:
        jl = GaussianSketch(r_inv.shape[-1], jl_size, generator=g).to(a.device)
        r_inv = jl._sketch(r_inv)
    return (a @ r_inv).square().sum(-1).to(A.dtype)
