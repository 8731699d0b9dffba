"""Sketch of a dot-product power series ``k(x, y) = sum_j w_j(x) w_j(y) <x, y>^j``.

One :class:`~kernelsketch.sketch.tensor.PolySketch` tree sketches every power
``x^{⊗j}``, ``j = 0..degree``; power ``j`` is weighted by ``w_j(x)`` and a final
SRHT compresses the concatenation to ``d_out`` (arXiv 2106.07880, Alg. 1).
``[..., d_in] -> [..., d_out]``; unbiased for the series. Theory:
docs/neural_kernels.md.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from kernelsketch.sketch.projections import SRHT
from kernelsketch.sketch.sampling import resolve_generator
from kernelsketch.sketch.tensor import PolySketch

__all__ = ["PowerSeriesSketch", "fit_nonnegative_polynomial", "unit_rows"]


class PowerSeriesSketch(nn.Module):
    """Features ``S(concat_j w_j(x) PolySketch_j(x))`` of dimension ``d_out``.

    Parameters
    ----------
    d_in : int
    degree : int >= 1
        Highest power sketched.
    d_out : int
        Output dimension (the final SRHT's).
    poly_dim : int
        Dimension of each power's PolySketch.
    kind : PolySketch node kind ("srht", "gaussian", "countsketch", "tensorsketch")
    seed : int, optional
    generator : torch.Generator, optional
        Source of the random sketches (one of the two; neither: torch's global
        generator), as for :mod:`kernelsketch.sketch` modules.

    Notes
    -----
    ``E[<phi(x), phi(y)>] = sum_j w_j(x) w_j(y) <x, y>^j`` (PolySketch and SRHT
    are unbiased and independent). The j = 0 power is exact (a constant).
    """

    def __init__(self, d_in, degree, d_out, *, poly_dim, kind="srht", seed=None, generator=None):
        super().__init__()
        generator = resolve_generator(seed, generator)
        self.degree, self.d_out = degree, d_out
        self.poly = PolySketch(d_in, poly_dim, degree, kind=kind, generator=generator)
        self.compress = SRHT((degree + 1) * poly_dim, d_out, generator=generator)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Features of ``x`` [..., d_in] with power weights [degree + 1] or [..., degree + 1]."""
        return self.combine(self.poly.all_powers(x), weights)

    def combine(
        self, powers: list[torch.Tensor], weights: torch.Tensor, compress=None
    ) -> torch.Tensor:
        """``compress(concat_j weights_j powers_j)``; several series can share one ``all_powers``.

        ``compress`` defaults to this module's SRHT; pass another SRHT of the
        same input size for an independent second series on the same powers.
        """
        z = torch.cat([weights[..., j, None] * p for j, p in enumerate(powers)], dim=-1)
        return (compress or self.compress)(z)


def unit_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (x / |x|, |x|) over the last dim; zero rows stay zero (norm 0)."""
    r = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x / torch.where(r > 0, r, torch.ones_like(r)), r


_FITS: dict[tuple, tuple[float, ...]] = {}


def _fit(fn: Callable[[torch.Tensor], torch.Tensor], degree: int) -> tuple[float, ...]:
    # Grid at cosine-spaced points: dense near t = +-1, where the arc-cosine
    # functions have their square-root singularities.
    t = np.cos(np.linspace(0.0, np.pi, 40 * (degree + 1) + 1))
    y = fn(torch.from_numpy(t)).numpy()
    A = np.vander(t, degree + 1, increasing=True)
    w = np.ones_like(t)
    w[0] = 100.0  # t = 1 (the diagonal k(x, x)) fitted almost exactly
    coef, _ = nnls(A * w[:, None], y * w, maxiter=50 * (degree + 1))
    return tuple(float(c) for c in coef)


def fit_nonnegative_polynomial(
    key: Hashable, fn: Callable[[torch.Tensor], torch.Tensor], degree: int
) -> torch.Tensor:
    """Least-squares fit of ``fn`` on [-1, 1] by ``sum_j c_j t^j`` with ``c_j >= 0``.

    Solved with ``scipy.optimize.nnls`` on a cosine-spaced grid (the point
    t = 1 weighted 100x); the non-negativity makes the fitted kernel positive
    definite on every sphere and sketchable by PolySketch (arXiv 2106.07880,
    Sec. 4). Results are cached by the hashable ``key`` (e.g.
    ``("ntk", depth, degree)``), so ``fn`` is evaluated once per key.

    Returns
    -------
    coef : torch.Tensor (float64) of shape (degree + 1,)
    """
    if (key, degree) not in _FITS:
        _FITS[key, degree] = _fit(fn, degree)
    return torch.tensor(_FITS[key, degree], dtype=torch.float64)
