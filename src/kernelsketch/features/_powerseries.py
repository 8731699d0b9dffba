"""Helpers of the power-series sketches of neural kernels.

- :func:`fit_nonnegative_polynomial`: least-squares fit of a function on [-1, 1]
  by a polynomial with non-negative coefficients (the dot-product kernel NTK
  Sketch sketches, arXiv 2106.07880, Sec. 4);
- :func:`unit_rows`: rows and their norms, without overflow.

The sketch of the series itself is ``kernelsketch.features._horner.HornerSketch``.
Theory: docs/neural_kernels.md.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import numpy as np
import torch
from scipy.optimize import nnls

__all__ = ["fit_nonnegative_polynomial", "unit_rows"]


def unit_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (x / |x|, |x|) over the last dim; zero rows stay zero (norm 0).

    The norm is taken of x divided by its largest entry, so it overflows only
    where |x| itself exceeds the dtype (float32 rows of entries ~1e20 are fine).
    """
    top = x.abs().amax(-1, keepdim=True)
    y = x / torch.where(top > 0, top, torch.ones_like(top))
    r = torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    return y / torch.where(r > 0, r, torch.ones_like(r)), r * top


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
