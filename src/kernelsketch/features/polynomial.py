"""Features for the polynomial kernel ``(gamma <x, y> + coef0)^degree``.

Both transformers lift ``x -> a(x) = [sqrt(gamma) x, sqrt(coef0)]``, so the kernel
is ``<a(x), a(y)>^degree``; both take dense arrays or scipy sparse matrices
``(n_samples, n_features)`` and return float32 for float32 input.

- :class:`PolynomialSketch`: in the principal axes of the training data, the ``k``
  heaviest monomials of ``a(x)^{⊗degree}`` exactly and a TensorSketch of the rest;
  ``E[<S(x), S(y)>] = k(x, y)`` for all x, y, with the variance of a TensorSketch of the
  residual (a few percent of the whole on real data); exact when every monomial fits.
  ``kind="countsketch"``: oblivious, the constant and linear monomials exactly and a
  TensorSketch of the rest; ``kind="srht"`` / ``"gaussian"``: the oblivious PolySketch
  tree of Ahle et al. (SODA 2020).
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

import functools
import itertools
import math
import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from kernelsketch._checks import (
    check_allocation,
    check_choice,
    check_float,
    check_int,
    check_tensor,
)
from kernelsketch.features._base import (
    Progress,
    RandomFeaturesTransformer,
)
from kernelsketch.sketch.projections import CountSketch
from kernelsketch.sketch.tensor import PolySketch

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
    check_int("n_components", est.n_components, min=1, max=_MAX_COMPONENTS)
    check_int("degree", est.degree, min=1, max=_MAX_DEGREE)
    check_float("gamma", est.gamma, min=0.0, min_exclusive=True)
    check_float("coef0", est.coef0, min=0.0)


# Lifted dimension up to which PolynomialSketch takes its exact head in the principal axes
# of the training data (one [D, D] rotation per row); above it, in the input coordinates.
_ROTATE_MAX_DIM = 256
# Training rows (evenly spaced) on which the rotation and the head monomials are estimated.
_ROTATION_ROWS = 4096
_SCORE_ROWS = 512
# Candidate head monomials scored per output feature.
_CANDIDATES_PER_FEATURE = 2
# TensorSketch corrections (distinct orderings of head monomials) allowed per output feature.
_ORDERINGS_PER_FEATURE = 24
# Largest [rows, r^(q-1)] product table for the head's candidate moments (else a gather).
_MOMENT_WORDS = 1 << 22
# Largest [D, m] CountSketch kept as a dense matrix (one matmul instead of a scatter), and
# the largest dense [k, m] head correction (else sparse, also when it has under 1/16 non-zeros).
_DENSE_COUNTSKETCH = 1 << 20
# The dense CountSketch product costs ~ n q w D, the scatter ~ n q (w + D) with a 40-50x larger
# constant (measured, 1 thread: D = 13-32 dense faster, D = 65 at w = 1024 scatter 2x faster):
# dense while w D <= 45 (w + D).
_DENSE_COUNTSKETCH_WORK = 45
# Bytes of temporaries per block of rows in the torch maps' forward.
_BLOCK_BYTES = 1 << 26
# Largest n_components / degree accepted (sizes above cannot be allocated or evaluated).
_MAX_COMPONENTS = 1 << 26
_MAX_DEGREE = 64


def _multisets(r: int, q: int) -> np.ndarray:
    """All multisets of size ``q`` from ``range(r)``, as sorted rows: int64 [C(r+q-1, q), q]."""
    cur = np.arange(r, dtype=np.int64)[:, None]
    for _ in range(q - 1):
        last = cur[:, -1]
        reps = r - last
        rows = np.repeat(np.arange(len(cur)), reps)
        offs = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
        cur = np.concatenate([cur[rows], (last[rows] + offs)[:, None]], axis=1)
    return cur


def _multiplicity(c: np.ndarray) -> np.ndarray:
    """Number of distinct orderings ``q! / prod(run lengths!)`` of each sorted row of ``c``."""
    denom = np.ones(len(c), dtype=np.float64)
    run = np.ones(len(c), dtype=np.float64)
    for t in range(1, c.shape[1]):
        run = np.where(c[:, t] == c[:, t - 1], run + 1.0, 1.0)
        denom *= run
    return math.factorial(c.shape[1]) / denom


@functools.lru_cache(maxsize=64)
def _candidates(r: int, q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The head's candidates over ``r`` coordinates, which depend on ``(r, q)`` only (cached,
    read-only): multisets [C, q] (:func:`_multisets`), their multiplicities [C], and the
    flat index of their first ``q - 1`` entries in ``[r]^(q-1)`` [C]."""
    cand = _multisets(r, q)
    flat = np.ravel_multi_index(tuple(cand[:, :-1].T), (r,) * (q - 1)) if q > 1 else cand[:, 0]
    out = (cand, _multiplicity(cand), flat)
    for a in out:
        a.setflags(write=False)
    return out


@functools.lru_cache(maxsize=256)
def _ordering_positions(pattern: tuple[bool, ...]) -> np.ndarray:
    """Distinct orderings of a sorted row whose neighbours are equal where ``pattern`` is
    True, as positions into the row: int64 [P, q]."""
    labels = np.concatenate([[0], np.cumsum(~np.array(pattern, dtype=bool))])  # run labels
    first = np.searchsorted(labels, np.arange(labels[-1] + 1))  # first position of a run
    perms = np.array(sorted(set(itertools.permutations(labels.tolist()))), dtype=np.int64)
    return first[perms]


@functools.lru_cache(maxsize=8)
def _out_of_order_pairs(q: int) -> tuple[np.ndarray, list[tuple[int, int, np.ndarray]]]:
    """All ``q!`` permutations [P, q] and, per position pair ``u < v``, the permutations that
    put a later position of the row at ``u`` than at ``v`` (mask [P])."""
    perms = np.array(list(itertools.permutations(range(q))), dtype=np.int64)
    pairs = [(u, v, perms[:, u] > perms[:, v]) for u in range(q) for v in range(u + 1, q)]
    return perms, pairs


def _orderings(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct orderings of each sorted row of ``c`` [k, q]: (owner row [N], tuples [N, q])."""
    q = c.shape[1]
    if q <= 4:  # all q! permutations at once; of those giving one tuple, keep the one that
        # keeps equal entries in their order (a few array operations instead of a loop)
        perms, pairs = _out_of_order_pairs(q)
        T = c[:, perms]  # [k, q!, q]
        keep = np.ones(T.shape[:2], dtype=bool)
        for u, v, swapped in pairs:
            keep &= ~((T[:, :, u] == T[:, :, v]) & swapped)
        owner, p = np.nonzero(keep)
        return owner, T[owner, p]
    pattern = c[:, 1:] == c[:, :-1]  # rows with one equality pattern share their orderings
    code = pattern @ (1 << np.arange(q - 2, -1, -1))  # the pattern as an int, first bit high
    owners, tuples = [], []
    for key in np.unique(code).tolist():
        rows = np.flatnonzero(code == key)
        pos = _ordering_positions(tuple(bool(key >> (q - 2 - t) & 1) for t in range(q - 1)))
        owners.append(np.repeat(rows, len(pos)))
        tuples.append(c[rows][:, pos].reshape(-1, q))
    return np.concatenate(owners), np.concatenate(tuples)


def _evenly_spaced(n: int, size: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, size).round().astype(np.int64))


@functools.lru_cache(maxsize=1)
def _fft_sizes() -> np.ndarray:
    """Sorted 7-smooth numbers ``2^a 3^b 5^c 7^e <= _MAX_COMPONENTS``: FFT lengths without
    a large prime factor (a prime length takes 3-6x the time of a 7-smooth one nearby)."""
    sizes = [1]
    for p in (2, 3, 5, 7):
        sizes = [v * p**e for v in sizes for e in range(int(math.log(_MAX_COMPONENTS, p)) + 1)
                 if v * p**e <= _MAX_COMPONENTS]
    return np.array(sorted(sizes), dtype=np.int64)


def _choose_head(A: np.ndarray, q: int, m: int, n_exact, rotate: bool, row_sq=None):
    """The exact head of :class:`PolynomialSketch` from lifted rows ``A`` [s, D] (float64).

    Returns ``(rotation [D, D] or None, head [k, q] int64, residual)``: the head monomials
    (indices into the rotated coordinates ``b = A @ rotation``, or into ``A``) and the
    share of ``mean ||a||^{2q}`` they leave to the sketch (docs/polynomial_features.md).
    ``row_sq``: the rows' squared norms when ``A`` holds only some of their columns.
    """
    D = A.shape[1]
    score = _evenly_spaced(len(A), _SCORE_ROWS)
    if rotate:
        V = np.linalg.eigh(A.T @ A / len(A))[1]
        V = V[:, ::-1].copy()
        order = np.arange(D)
        B = A[score] @ V
    else:
        V, order = None, np.argsort(-(A * A).mean(0), kind="stable")
        B = A[score][:, order]
    sq = np.einsum("ij,ij->i", B, B) if row_sq is None else row_sq[score]
    total = float(np.mean(sq**q))
    if n_exact == "auto" and row_sq is None and math.comb(D + q - 1, q) <= m:
        return V, order[_candidates(D, q)[0]], 0.0
    budget = m if n_exact == "auto" else min(int(n_exact), m)
    if budget == 0 or total <= 0.0:
        return V, np.zeros((0, q), dtype=np.int64), 1.0 if total > 0 else 0.0
    r = 1
    while r < D and math.comb(r + q, q) <= _CANDIDATES_PER_FEATURE * budget:
        r += 1
    cand, mult, flat = _candidates(r, q)
    B2 = B[:, :r] * B[:, :r]
    if q == 1:
        moment = B2.mean(0)[cand[:, 0]]
    elif len(B2) * r ** (q - 1) <= _MOMENT_WORDS:
        # mean_x prod_t b_{c_t}^2 for every multiset c at once: [r^(q-1), r] moments
        P = B2
        for _ in range(q - 2):
            P = (P[:, :, None] * B2[:, None, :]).reshape(len(B2), -1)
        moment = (P.T @ B2)[flat, cand[:, -1]] / len(B2)
    else:
        prod = B2[:, cand[:, 0]]
        for t in range(1, q):
            prod *= B2[:, cand[:, t]]
        moment = prod.mean(0)
    energy = mult * moment
    keep = np.argsort(-energy, kind="stable")
    cand, mult, energy = cand[keep], mult[keep], energy[keep]
    # At most budget head monomials, and a bounded number of TensorSketch corrections.
    k_max = min(budget, len(cand),
                int(np.searchsorted(np.cumsum(mult), _ORDERINGS_PER_FEATURE * m, side="right")))
    resid = np.maximum(total - np.concatenate([[0.0], np.cumsum(energy[:k_max])]), 0.0)
    if n_exact == "auto":
        k = np.arange(k_max + 1)
        # Sketch variance ~ residual^2 / (sketch size); keep >= 1 sketched feature, of a
        # 7-smooth width (fast FFT) where the budget reaches one.
        sizes = _fft_sizes()
        smooth = sizes[np.searchsorted(sizes, m - k).clip(max=len(sizes) - 1)] == m - k
        allowed = (k < m) & smooth if np.any((k < m) & smooth) else k < m
        objective = np.where(allowed, resid**2 / np.maximum(m - k, 1), np.inf)
        k_best = int(np.argmin(objective))
    else:
        k_best = k_max
    return V, order[cand[:k_best]], float(resid[k_best] / total)


def _oblivious_head(d: int, q: int, m: int) -> np.ndarray:
    """Head of ``kind="countsketch"`` on ``a = [sqrt(gamma) x, sqrt(coef0)]`` (constant at
    index ``d``): the constant monomial ``coef0^(q/2)`` and, when ``d + 1 <= m / 2``, the ``d``
    linear ones ``sqrt(q gamma coef0^(q-1)) x_i``; int64 [k, q], rows sorted. They carry
    ``coef0^q + q coef0^(q-1) gamma <x, y>`` of the kernel exactly, whatever the data."""
    const = np.full((1 if m > 1 else 0, q), d, dtype=np.int64)  # m = 1: the sketch alone
    if d + 1 > m // 2:
        return const
    linear = np.concatenate([np.arange(d)[:, None], np.full((d, q - 1), d)], axis=1)
    return np.concatenate([linear, const])


def _oblivious_residual(sq: np.ndarray, c2: float, q: int, linear: bool) -> float:
    """Share of ``sum_x ||a_x||^{2q}`` that :func:`_oblivious_head` leaves to the sketch, for
    rows' squared norms ``sq`` whose constant coordinate squared is ``c2``."""
    total = float((sq**q).sum())
    if total <= 0.0:
        return 0.0
    head = len(sq) * c2**q + (q * c2 ** (q - 1) * (sq - c2).sum() if linear else 0.0)
    return max(1.0 - head / total, 0.0)


def _expected_error(A: np.ndarray, q: int, residual: float, m_sketch: int) -> float:
    """Predicted relative Gram error on lifted rows ``A`` [s, D] of exact head features
    leaving the share ``residual`` of ``mean ||a||^{2q}`` to a width-``m_sketch`` sketch.

    The sketched part's variance is about ``(r_x r_y + <res_x, res_y>^2) / m`` for residual
    squared norms ``r`` (TensorSketch and PolySketch alike, up to degree-dependent
    constants), ``sum_x r_x ~ residual * sum_x ||a_x||^{2q}``; the head part is exact.
    """
    if not m_sketch or not len(A) or residual <= 0.0:
        return 0.0
    r = residual * float((np.einsum("ij,ij->i", A, A) ** q).sum())
    K = np.linalg.norm((A @ A.T) ** q)
    return float(math.sqrt(2.0 / m_sketch) * r / max(float(K), 1e-300))


def _draw_countsketches(d: int, width: int, q: int, generator: torch.Generator):
    """``q`` independent CountSketches ``R^d -> R^width`` drawn at once (TensorSketch's
    factors, :class:`~kernelsketch.sketch.tensor.TensorSketch`): buckets int64 [q, d],
    signs float64 [q, d] (±1)."""
    check_allocation(16.0 * q * d, f"the {q} CountSketches of {d} lifted features",
                     "use fewer features")
    buckets = torch.randint(width, (q, d), generator=generator)
    signs = torch.randint(2, (q, d), generator=generator, dtype=torch.float64).mul_(2).sub_(1)
    return buckets, signs


def _countsketch_columns(buckets: np.ndarray, width: int) -> np.ndarray:
    """Column of each (factor t, input i) in the side-by-side matrix ``[d, q width]``."""
    return buckets + np.arange(len(buckets))[:, None] * width


def _tensorsketch_combine(y: torch.Tensor, q: int, width: int) -> torch.Tensor:
    """TensorSketch from its ``q`` CountSketches side by side, ``y`` [n, q width]:
    ``IFFT(prod_t FFT(C_t b))`` (Pham & Pagh), [n, width]."""
    spectrum = torch.fft.rfft(y.view(len(y), q, width), dim=-1)
    return torch.fft.irfft(spectrum.prod(1) if q > 1 else spectrum[:, 0], n=width)


class PolynomialSketchMap(nn.Module):
    """Torch map of :class:`PolynomialSketch`: ``[..., d] -> [..., d_out]``.

    ``b = [sqrt(gamma) x, sqrt(coef0)] @ rotation``; features: the ``k`` exact head
    monomials ``sqrt(mult_c) prod_t b[c_t]`` (``head`` [k, q]), then a sketch of the rest of
    ``b^{⊗q}``: a degree-q TensorSketch of ``b`` (Pham & Pagh: ``countsketches`` = (buckets
    int64 [q, D], signs [q, D]) of width ``width``, combined by FFT) minus the head's own
    terms (the correction), or a PolySketch tree (``tree``, no head), then ``pad`` zero
    columns. ``<phi(x), phi(y)>`` is unbiased for ``<a(x), a(y)>^q``; the head part is exact.
    """

    def __init__(self, gamma: float, coef0: float, degree: int, *, rotation, head,
                 countsketches=None, width: int = 0, tree: PolySketch | None = None,
                 pad: int = 0):
        super().__init__()
        self.gamma, self.coef0, self.degree = gamma, coef0, degree
        self.register_buffer("rotation", rotation)
        self.register_buffer("head", head)
        head_np = head.numpy()
        mult = _multiplicity(head_np) if len(head_np) else np.zeros(0)
        self.register_buffer("head_scale", torch.from_numpy(np.sqrt(mult)))
        self.sketch = tree
        self.width = int(width) if countsketches is not None else 0
        buckets, signs = (countsketches if countsketches is not None else
                          (torch.zeros(degree, 0, dtype=torch.int64), torch.zeros(degree, 0)))
        self.register_buffer("cs_buckets", buckets)
        self.register_buffer("cs_signs", signs.double())
        d_lift, w = buckets.shape[1], self.width
        b_np, s_np = buckets.numpy(), self.cs_signs.numpy()
        # Small and narrow: the q CountSketches side by side as one dense [D, q w] matrix
        # (one matmul), column t w + h_t(i) of row i holding s_t(i); else a scatter per call.
        M = np.zeros(0)
        if (w and d_lift * degree * w <= _DENSE_COUNTSKETCH
                and w * d_lift <= _DENSE_COUNTSKETCH_WORK * (w + d_lift)):
            M = np.zeros((d_lift, degree * w))
            M[np.tile(np.arange(d_lift), degree), _countsketch_columns(b_np, w).ravel()] = (
                s_np.ravel())
        self.register_buffer("ts_matrices", torch.from_numpy(M))
        # The head's own terms in the TensorSketch: correction = head @ C for C [k, w], dense
        # when small, else sparse.
        C = torch.zeros(0, 0, dtype=torch.float64)
        owner_key = bucket_key = np.zeros(0, dtype=np.int64)
        coef = np.zeros(0)
        if w and len(head_np):
            k = len(head_np)
            owner, tuples = _orderings(head_np)
            flat = tuples + np.arange(degree) * d_lift  # (factor t, coordinate) in [q, D]
            bucket = np.take(b_np, flat).sum(1) % w
            weight = np.take(s_np, flat).prod(1) / np.sqrt(mult)[owner]
            # dense while its product costs at most 16x the sparse one's multiply-adds
            if k * w <= min(_DENSE_COUNTSKETCH, 16 * len(weight)):
                C = torch.from_numpy(np.bincount(owner * w + bucket, weights=weight,
                                                 minlength=k * w).reshape(k, w))
            else:  # orderings that share a (bucket, owner) summed
                key, inverse = np.unique(bucket * k + owner, return_inverse=True)
                owner_key, bucket_key = key % k, key // k
                coef = np.bincount(inverse.ravel(), weights=weight, minlength=len(key))
        self.register_buffer("corr_matrix", C)
        self.register_buffer("corr_owner", torch.from_numpy(owner_key))
        self.register_buffer("corr_bucket", torch.from_numpy(bucket_key))
        self.register_buffer("corr_coef", torch.from_numpy(coef))
        self.pad = int(pad)
        self.d_out = len(head_np) + w + (tree.d_out if tree is not None else 0) + self.pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x)
        if x.shape[-1] + (self.coef0 != 0.0) != self._d_lift():
            raise ValueError(f"x must have {self._d_lift() - (self.coef0 != 0.0)} features in its "
                             f"last dimension, got shape {list(x.shape)}")
        dtype = x.dtype
        work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        rows = x.reshape(-1, x.shape[-1]).to(work)
        if self.rotation.numel():  # lift and rotation in one product: b = a(x) @ rotation
            R, d = self.rotation.to(work), x.shape[-1]
            W = R[:d] * math.sqrt(self.gamma)
            b = torch.addmm(R[d] * math.sqrt(self.coef0), rows, W) if self.coef0 else rows @ W
            out = self.from_lifted_blocks(b, rotated=True)
        else:
            out = self.from_lifted_blocks(_lift(rows, self.gamma, self.coef0))
        return out.reshape(*x.shape[:-1], self.d_out).to(dtype)

    def from_lifted_blocks(self, a: torch.Tensor, *, rotated: bool = False) -> torch.Tensor:
        """:meth:`from_lifted` on blocks of rows with at most 64 MB of temporaries each."""
        q, D = self.cs_buckets.shape
        per_row = 8 * (self.head.numel() + 4 * self.d_out + (q + 1) * D + 4 * q * self.width)
        step = max(1, _BLOCK_BYTES // per_row)
        if len(a) <= step:
            return self.from_lifted(a, rotated=rotated)
        return torch.cat([self.from_lifted(a[i:i + step], rotated=rotated)
                          for i in range(0, len(a), step)])

    def _d_lift(self) -> int:
        if self.rotation.numel():
            return self.rotation.shape[0]
        if self.width:
            return self.cs_buckets.shape[1]
        if self.sketch is not None:
            return self.sketch.d_in
        return int(self.head.max()) + 1 if self.head.numel() else 0

    def _subtract_correction(self, s: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """``s -= head @ C`` in place: the head's own terms in the TensorSketch (C [k, width],
        dense, or sparse (owner, bucket, coef) entries: a scatter while there are at most
        ``width`` of them, else a sparse product; measured, the scatter is 2x faster for
        the oblivious head's few terms and 20x slower at 10 terms per bucket)."""
        coef = self.corr_coef.to(head.dtype)
        if self.corr_matrix.numel():
            return s.addmm_(head, self.corr_matrix.to(head.dtype), alpha=-1.0)
        if len(coef) <= self.width:
            terms = head.index_select(1, self.corr_owner) * coef
            return s.index_add_(1, self.corr_bucket, terms, alpha=-1.0)
        C = torch.sparse_coo_tensor(torch.stack([self.corr_bucket, self.corr_owner]), coef,
                                    (self.width, head.shape[1]), check_invariants=False,
                                    is_coalesced=True)
        return s.sub_(torch.sparse.mm(C, head.mT).mT)

    def head_features(self, b: torch.Tensor) -> torch.Tensor:
        """The exact head monomials ``sqrt(mult_c) prod_t b[:, c_t]`` of rotated rows ``b``."""
        # Gathered as rows of b^T (contiguous copies, 2-3x faster than gathering columns);
        # returns the transpose of a contiguous [k, n].
        bt, cols = b.mT.contiguous(), self.head.mT
        head = bt.index_select(0, cols[0]).mul_(self.head_scale.to(b.dtype)[:, None])
        for t in range(1, len(cols)):
            head.mul_(bt.index_select(0, cols[t]))
        return head.mT

    def tensorsketch(self, b: torch.Tensor) -> torch.Tensor:
        """The degree-q TensorSketch of rows ``b`` [n, D] -> [n, width] (compute dtype)."""
        q, w = self.degree, self.width
        if self.ts_matrices.numel():  # the q CountSketches in one product
            y = b @ self.ts_matrices.to(b.dtype)
        else:
            cols = (self.cs_buckets + torch.arange(q, device=b.device)[:, None] * w).ravel()
            y = b.new_zeros(len(b), q * w).index_add_(
                1, cols, b.repeat(1, q) * self.cs_signs.to(b.dtype).ravel())
        return _tensorsketch_combine(y, q, w)

    def from_lifted(self, a: torch.Tensor, *, rotated: bool = False) -> torch.Tensor:
        """Features of lifted rows ``a`` [n, D] (compute dtype; already rotated if ``rotated``)."""
        b = a @ self.rotation.to(a.dtype) if self.rotation.numel() and not rotated else a
        parts = []
        head = self.head_features(b) if self.head.numel() else None
        if head is not None:
            parts.append(head)
        if self.width:
            s = self.tensorsketch(b)
            if head is not None:
                self._subtract_correction(s, head)
            parts.append(s)
        if self.sketch is not None:
            parts.append(self.sketch._sketch(b))
        if self.pad:
            parts.append(b.new_zeros(len(b), self.pad))
        return torch.cat(parts, dim=-1)


class PolynomialSketch(RandomFeaturesTransformer):
    """Features for the kernel ``(gamma <x, y> + coef0)^degree``: exact head + TensorSketch.

    With ``a(x) = [sqrt(gamma) x, sqrt(coef0)]`` the kernel is ``<a(x)^{⊗q}, a(y)^{⊗q}>``,
    and it is unchanged by any rotation of ``a``. ``fit`` rotates ``a`` to the principal
    axes of the training data and keeps, as exact features, the ``k`` monomials
    ``sqrt(mult) prod_t b_{c_t}`` of the rotated ``b`` that carry the most of
    ``mean ||a||^{2q}``; the rest of the tensor power (every other monomial) is sketched by
    a degree-``q`` TensorSketch (the construction of scikit-learn's
    ``PolynomialCountSketch``) from which the head's own terms are subtracted. ``k``
    minimises ``residual^2 / (n_components - k)``, the sketch's variance; when all
    ``C(D + q - 1, q)`` monomials fit in ``n_components`` the features are exact (zero
    columns pad the output). ``transform(X) @ transform(Y).T`` is an unbiased estimate of
    the kernel matrix for any X, Y; its variance is that of a TensorSketch of the residual,
    which on real data is a few percent of the whole (docs/polynomial_features.md).

    Parameters
    ----------
    n_components : int, default 100
        Output dimension.
    degree : int, default 2
    gamma : float, default 1.0
    coef0 : float, default 0.0
        Must be >= 0 (the kernel is then positive definite).
    kind : {"tensorsketch", "srht", "gaussian", "countsketch"}, default "tensorsketch"
        Sketch of the residual. ``"tensorsketch"``: the head and a TensorSketch (above).
        ``"countsketch"``: oblivious (no rotation, the map depends on ``n_features``,
        ``degree``, ``n_components`` only): the constant monomial and, when
        ``n_features + 1 <= n_components / 2``, the linear ones exact (they carry
        ``coef0^q + q coef0^(q-1) gamma <x, y>``), the rest a degree-``q`` TensorSketch of
        ``a(x)`` (Pham & Pagh: ``q`` CountSketches, FFT, elementwise product, inverse FFT;
        a 7-smooth width) minus the head's own terms; unbiased. ``n_exact=0`` is the plain
        TensorSketch, equal in distribution to ``PolynomialCountSketch``.
        ``"srht"``, ``"gaussian"``: no head, the PolySketch degree-2 tree of Ahle et al.
        (SODA 2020) with these node sketches on ``a(x)``, an oblivious sketch whose variance
        is polynomial in ``degree`` (TensorSketch's grows like ``3^degree``): for
        ``degree >= 5``.
    n_exact : int or "auto", default "auto"
        Number of exact head features (``kind="tensorsketch"`` only). ``0`` gives the
        oblivious TensorSketch, equal in distribution to ``PolynomialCountSketch``.
    random_state : int, RandomState or None

    Scipy sparse input is accepted and never densified when the lifted dimension exceeds
    256 (head in the input coordinates, TensorSketch by sparse products, ``O(nnz(X))``);
    the tree kinds take it leaf by leaf (``"srht"`` / ``"gaussian"`` leaves are dense
    ``[n_features, n_components]`` matrices).

    Memory: buffers ``O(D^2 + q (D + k q!) + n_components)`` for ``D = n_features + 1``
    (``"tensorsketch"``; ``O(q^2 D + n_components)`` for ``"countsketch"``, plus the
    ``q`` CountSketches as one dense ``[D, q n_components]`` matrix when it has at most
    ``2^20`` entries); ``transform`` works on blocks of rows with at most 64 MB of
    temporaries, plus its ``(n, n_components)`` output.

    Attributes
    ----------
    feature_map_ : PolynomialSketchMap
        Torch map, usable on GPU after ``.to("cuda")``.
    n_exact_ : int
        Exact head features used.
    residual_ : float
        Share of ``mean ||a(x)||^{2 degree}`` (training data) left to the sketch.

    References
    ----------
    Pham, Pagh, KDD 2013 (TensorSketch); Ahle et al., "Oblivious Sketching of High-Degree
    Polynomial Kernels", SODA 2020 (the tree kinds).
    """

    _accept_sparse = True

    def __init__(
        self,
        *,
        n_components: int = 100,
        degree: int = 2,
        gamma: float = 1.0,
        coef0: float = 0.0,
        kind: str = "tensorsketch",
        n_exact="auto",
        random_state=None,
    ):
        self.n_components = n_components
        self.degree = degree
        self.gamma = gamma
        self.coef0 = coef0
        self.kind = kind
        self.n_exact = n_exact
        self.random_state = random_state

    @property
    def _fit_reads_data(self) -> bool:  # the exact head is fitted on the rows (no Dask fit)
        return self.kind == "tensorsketch" and self.n_exact != 0

    def _check_params(self, n_features: int) -> None:
        _check_poly_params(self)
        check_choice("kind", self.kind, ("tensorsketch", "srht", "gaussian", "countsketch"))
        if self.n_exact != "auto":
            check_int("n_exact", self.n_exact, min=0)

    def _make_feature_map(self, n_features, generator, X):
        gamma, coef0, q, m = float(self.gamma), float(self.coef0), self.degree, self.n_components
        D = n_features + (coef0 != 0.0)
        tree = None
        if self.kind in ("srht", "gaussian"):
            tree = PolySketch(D, m, q, kind=self.kind, generator=generator).double()
        # On a subsample, divided by its largest entry (the head is scale-free: no overflow).
        rows = _evenly_spaced(X.shape[0], _ROTATION_ROWS)
        cols = row_sq = None
        if sp.issparse(X):
            A = _lift_sparse(X[rows], gamma, coef0)
            scale = max(float(np.abs(A.data).max()) if A.nnz else 0.0, 1e-300)
            if D > _ROTATE_MAX_DIM:  # wide sparse data: only the heaviest columns densified
                energy = np.asarray(A.multiply(A).sum(0)).ravel()
                cols = np.sort(np.argsort(-energy, kind="stable")[: 2 * m + 1])
                row_sq = np.asarray(A.multiply(A).sum(1)).ravel() / scale**2
                A = A[:, cols]
            A = A.toarray() / scale
        else:
            A = np.empty((len(rows), D))
            A[:, :n_features] = X.numpy()[rows] if len(rows) < len(X) else X.numpy()
            A[:, :n_features] *= math.sqrt(gamma)
            A[:, n_features:] = math.sqrt(coef0)
            scale = max(float(np.abs(A).max()), 1e-300)
            A /= scale
        empty = np.zeros((0, q), dtype=np.int64)
        if tree is not None:
            self.n_exact_, self.residual_ = 0, 1.0
            fmap = PolynomialSketchMap(gamma, coef0, q, rotation=torch.zeros(0, 0),
                                       head=torch.from_numpy(empty), tree=tree)
            if cols is None:
                self._warn_if_inaccurate(A, 1.0, m)
            return fmap
        if self.kind == "countsketch":  # oblivious: the head depends on (d, q, m) only
            V, head = None, _oblivious_head(n_features, q, m) if coef0 else empty
            sq = row_sq if row_sq is not None else np.einsum("ij,ij->i", A, A)
            resid = _oblivious_residual(sq, coef0 / scale**2, q, len(head) > 1)
            # the widest 7-smooth sketch that fits (a large prime factor slows its FFT 3-6x)
            sizes = _fft_sizes()
            m_sketch = (0 if len(head) == D and q == 1 else
                        int(sizes[np.searchsorted(sizes, m - len(head), side="right") - 1]))
        else:
            if self.n_exact == 0:  # the plain TensorSketch
                V, head, resid = None, empty, 1.0
            else:
                V, head, resid = _choose_head(A, q, m, self.n_exact, D <= _ROTATE_MAX_DIM, row_sq)
                head = head if cols is None else cols[head]
            m_sketch = m - len(head) if resid > 0.0 else 0
        self.n_exact_, self.residual_ = len(head), resid
        rotation = torch.zeros(0, 0) if V is None else torch.from_numpy(V)
        fmap = PolynomialSketchMap(
            gamma, coef0, q, rotation=rotation.double(), head=torch.from_numpy(head),
            countsketches=_draw_countsketches(D, m_sketch, q, generator) if m_sketch else None,
            width=m_sketch, pad=m - len(head) - m_sketch)
        if cols is None:
            self._warn_if_inaccurate(A, resid, m_sketch)
        return fmap

    def _warn_if_inaccurate(self, A, residual: float, m_sketch: int) -> None:
        """Warn when the predicted relative Gram error on the training rows exceeds 0.5."""
        rows = A[_evenly_spaced(len(A), max(2, min(64, (1 << 22) // self.n_components)))]
        err = _expected_error(rows, self.degree, residual, m_sketch)
        self.expected_error_ = err
        if err > 0.5:
            warnings.warn(
                f"PolynomialSketch(n_components={self.n_components}, degree={self.degree}): "
                f"expected relative Gram error {err:.2f} on the training data (the degree-"
                f"{self.degree} tensor power of X has no dominant low-dimensional part); use "
                "more n_components, kind='srht' for degree >= 5, or data-dependent features "
                "(PolynomialLeverageSampler, Nystroem)", UserWarning, stacklevel=4)

    def _transform_sparse(self, X) -> np.ndarray:
        """Features of scipy sparse ``X`` (dense ndarray in the dtype of ``X``)."""
        fmap = self.feature_map_
        A = _lift_sparse(X, float(self.gamma), float(self.coef0))
        if fmap.sketch is not None:
            return _polysketch_sparse(fmap.sketch, A).numpy().astype(X.dtype)
        if fmap.rotation.numel():  # dense rotated rows (lifted dimension <= 256)
            with torch.no_grad():
                B = torch.from_numpy(np.asarray(A @ fmap.rotation.numpy()))
                Z = fmap.from_lifted(B, rotated=True)
            return Z.numpy().astype(X.dtype)
        used = np.unique(fmap.head.numpy())
        parts = []
        head = None
        if len(used):
            cols = torch.from_numpy(np.asarray(A[:, used].toarray()))
            local = torch.from_numpy(np.searchsorted(used, fmap.head.numpy()))
            head = cols[:, local].prod(-1) * fmap.head_scale
            parts.append(head)
        if fmap.width:  # the q CountSketches as one sparse [D, q width] product: O(nnz(X))
            q, D = fmap.cs_buckets.shape
            cols = _countsketch_columns(fmap.cs_buckets.numpy(), fmap.width).ravel()
            M = sp.csr_matrix((fmap.cs_signs.numpy().ravel(), (np.tile(np.arange(D), q), cols)),
                              shape=(D, q * fmap.width))
            s = _tensorsketch_combine(torch.from_numpy((A @ M).toarray()), q, fmap.width)
            if head is not None:
                fmap._subtract_correction(s, head)
            parts.append(s)
        if fmap.pad:
            parts.append(torch.zeros(X.shape[0], fmap.pad, dtype=torch.float64))
        return torch.cat(parts, dim=-1).numpy().astype(X.dtype)


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

    def __init__(self, indices: torch.Tensor, scale: torch.Tensor, gamma: float, coef0: float,
                 d_in: int | None = None):
        super().__init__()
        self.register_buffer("indices", indices)
        self.register_buffer("scale", scale)
        self.gamma, self.coef0 = gamma, coef0
        self.d_in = d_in
        self.d_out = indices.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x)
        d = int(self.indices.max()) + 1 - (self.coef0 != 0.0) if self.indices.numel() else 0
        if x.dim() == 0 or x.shape[-1] < d or (self.d_in is not None and x.shape[-1] != self.d_in):
            raise ValueError(f"x must have {self.d_in if self.d_in is not None else d} features in "
                             f"its last dimension, got shape {list(x.shape)}")
        dtype = x.dtype
        work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        a = _lift(x.to(work), self.gamma, self.coef0)
        # one factor at a time: no [..., m, degree] temporary
        out = a.index_select(-1, self.indices[:, 0]) * self.scale.to(work)
        for t in range(1, self.indices.shape[1]):
            out.mul_(a.index_select(-1, self.indices[:, t]))
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
    progress: Callable[[str], None] | None = None,
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
    progress : callable, optional
        Called with a short description after the score sketch and after each of the
        ``degree`` index positions (``verbose`` fits).

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
    if progress is not None:
        progress(f"score sketch: {n} rows, sketch_size {sketch_size}")

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
        if progress is not None:
            progress(f"index {t + 1}/{degree}: {len(groups)} distinct prefixes")
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
    verbose : int, default 0
        ``>= 1``: the score sketch and each index position of the sampling on a tqdm bar
        (tqdm installed) or stderr.

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
        verbose: int = 0,
    ):
        self.n_components = n_components
        self.degree = degree
        self.gamma = gamma
        self.coef0 = coef0
        self.ridge = ridge
        self.sketch_size = sketch_size
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self, n_features: int) -> None:
        _check_poly_params(self)
        if self.ridge is not None:
            check_float("ridge", self.ridge, min=0.0, min_exclusive=True)
        check_int("sketch_size", self.sketch_size, min=1)
        check_int("verbose", self.verbose, min=0)

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
        gamma, coef0, q = float(self.gamma), float(self.coef0), self.degree
        check_allocation(8.0 * self.n_components * (2 * q + 4),
                         f"the n_components={self.n_components} sampled coordinates",
                         "use fewer n_components")
        # The sampling law is scale-free: sample on A / s with the ridge / s^(2q) (no overflow
        # for |X| ~ 1e100); the features keep the original scale.
        if sp.issparse(X):
            A = _lift_sparse(X, gamma, coef0)
            s = float(np.abs(A.data).max()) if A.nnz else 0.0
            A = A / (s or 1.0)
            trace = float((np.asarray(A.multiply(A).sum(1)).ravel() ** q).sum())
        else:
            A = _lift(X.to(torch.float64), gamma, coef0)
            s = float(A.abs().max()) if A.numel() else 0.0
            A = A / (s or 1.0)
            trace = float(((A * A).sum(-1) ** q).sum())
        log_s2q = 2 * q * math.log(s) if s > 0 else 0.0
        if self.ridge is None:
            ridge_s = trace / self.n_components
        else:
            ridge_s = math.exp(math.log(float(self.ridge)) - log_s2q)
        self.ridge_ = ridge_s * math.exp(min(log_s2q, 700.0))
        if trace == 0.0:  # K = 0 (all-zero X with coef0 = 0): any coordinate, weight 0
            idx = torch.randint(A.shape[1], (self.n_components, q), generator=generator)
            probs = torch.full((self.n_components,), float(A.shape[1]) ** -q, dtype=torch.float64)
        else:
            progress = Progress(self.verbose, "PolynomialLeverageSampler.fit", total=q + 1)
            idx, probs = sample_tensor_coordinates(
                A, q, self.n_components, ridge=max(ridge_s, 1e-12 * trace),
                sketch_size=self.sketch_size, generator=generator, progress=progress,
            )
            progress.close(f"{self.n_components} coordinates sampled")
        self.indices_ = idx.numpy()
        self.probabilities_ = probs.numpy()
        scale = 1.0 / torch.sqrt(self.n_components * probs)
        return CoordinateSampleMap(idx, scale, gamma, coef0, n_features)
