"""Dask arrays through the feature maps and ``KernelRidge``: data of any size, chunk by chunk.

Requires the optional ``dask`` extra (``pip install "kernelsketch[dask]"``).
Everything runs on the Dask scheduler in use (threads by default, a
``distributed.Client`` when one is active):

* ``transform`` of a fitted feature map on a Dask array is
  ``X.map_blocks(transform)``: lazy, one task per row chunk, each mapping its
  rows with the in-memory ``transform`` (so the features equal the in-memory
  ones chunk for chunk);
* ``fit`` of a map whose draw does not read the data (``_fit_reads_data``
  False: it depends on the number of features only) takes a Dask array
  without computing it; maps that read the data (landmarks, leverage
  sampling, occupied cells) raise a ``TypeError``;
* ``KernelRidge.fit`` reduces each chunk to ``(ZᵀZ, Zᵀy, Zᵀ1, Σy, n)``
  (D x D + D x k numbers, whatever the chunk length), sums them in a tree and
  solves ``(ZᵀZ + αI) w = Zᵀ(y - ȳ)`` once; memory is a few chunks plus D²,
  and the result equals the in-memory fit up to rounding. ``predict`` stays lazy.

Theory: docs/distributed.md.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["fit_transformer", "is_dask_array", "normal_equations", "predict_kernel_ridge",
           "transform", "tree_reduce"]


def is_dask_array(x: Any) -> bool:
    """Whether ``x`` is a ``dask.array.Array`` (without importing dask)."""
    da = sys.modules.get("dask.array")
    return da is not None and isinstance(x, da.Array)


def tree_reduce(items: Sequence[Any], combine: Callable[[Any, Any], Any]) -> Any:
    """Combine Dask delayed objects pairwise in a tree (depth log2 of their number), lazily."""
    import dask

    level = list(items)
    if not level:
        raise ValueError("items must be non-empty, got no delayed objects")
    while len(level) > 1:
        level = [dask.delayed(combine)(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
    return level[0]


def _check_array(X, name: str, estimator) -> Any:
    """A Dask array with one chunk along every axis but the first, float32/float64."""
    if X.ndim < 2 or (X.ndim > 2 and not getattr(estimator, "_allow_nd", False)):
        raise ValueError(f"{name} must be a 2-D Dask array (n_samples, n_features), got "
                         f"{X.ndim} dimensions")
    if any(np.isnan(c) for c in X.chunks[0]):
        raise ValueError(f"{name} must have known chunk sizes along its rows: call "
                         f"{name}.compute_chunk_sizes() first")
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    return X.rechunk({i: -1 for i in range(1, X.ndim)})


def fit_transformer(estimator, X):
    """``estimator.fit(X)`` for a Dask ``X``, without computing it (maps that do not read data)."""
    if estimator._fit_reads_data:
        raise TypeError(
            f"{type(estimator).__name__}.fit reads the data (its map depends on the rows, not "
            "only on their number of features) and does not take a Dask array: fit it on an "
            "in-memory array (e.g. a sample of the rows)"
        )
    X = _check_array(X, "X", estimator)
    # The draw depends on n_features and random_state only: any row gives the same map.
    return estimator.fit(np.zeros((1, *X.shape[1:]), dtype=X.dtype))


def transform(estimator, X):
    """``estimator.transform`` of a Dask ``X``, lazily and chunk by chunk (a Dask array)."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator)
    X = _check_array(X, "X", estimator)
    n_in = int(np.prod(X.shape[1:]))
    if n_in != estimator.n_features_in_:
        raise ValueError(f"X has {n_in} features, but {type(estimator).__name__} is expecting "
                         f"{estimator.n_features_in_} features as input")
    dtype = np.float32 if X.dtype == np.float32 else np.float64
    probe = estimator.transform(np.zeros((1, *X.shape[1:]), dtype=X.dtype))
    meta = probe[:0] if sp.issparse(probe) else np.empty((0, probe.shape[1]), dtype=dtype)
    return X.map_blocks(estimator.transform, dtype=dtype, meta=meta,
                        chunks=(X.chunks[0], (probe.shape[1],)),
                        drop_axis=list(range(2, X.ndim)))


def _normal_equations(features, x: np.ndarray, y: np.ndarray):
    """One chunk's (ZᵀZ, Zᵀy, Zᵀ1, Σy, n) in float64."""
    Z = features.transform(x)
    Z = Z.astype(np.float64) if sp.issparse(Z) else np.asarray(Z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    gram = Z.T @ Z
    gram = gram.toarray() if sp.issparse(gram) else gram
    return (np.asarray(gram), np.asarray(Z.T @ y), np.asarray(Z.sum(axis=0)).ravel(),
            y.sum(axis=0), len(y))


def _add(a, b):
    return tuple(x + y for x, y in zip(a, b))


def normal_equations(est, X, y):
    """The reduction behind ``KernelRidge.fit`` on Dask ``X`` and/or ``y`` (module docstring).

    Fits ``est._features()`` on ``X`` and sums every chunk's ``(ZᵀZ, Zᵀy, Zᵀ1, Σy, n)`` in a
    tree. Returns ``(features, gram [D, D], zty [D, k], zsum [D], ysum [k], n)``, float64
    numpy; the solve is :class:`~kernelsketch.features.krr.KernelRidge`'s.
    """
    import dask
    import dask.array as da

    if not is_dask_array(X):
        X = da.from_array(np.asarray(X), chunks=(y.chunks[0],) + (-1,) * (np.ndim(X) - 1))
    X = _check_array(X, "X", est)
    y = y if is_dask_array(y) else da.from_array(np.asarray(y))
    if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
        raise ValueError(f"y must have shape ({X.shape[0]},) or ({X.shape[0]}, n_targets) like "
                         f"X's rows, got {y.shape}")
    y = y.rechunk({0: X.chunks[0], **({1: -1} if y.ndim == 2 else {})})
    features = est._features()
    features.fit(X)
    xs, ys = X.to_delayed().ravel(), y.to_delayed().ravel()
    feat = dask.delayed(features, traverse=False)
    parts = [dask.delayed(_normal_equations)(feat, xb, yb) for xb, yb in zip(xs, ys)]
    gram, zty, zsum, ysum, n = dask.compute(tree_reduce(parts, _add))[0]
    return features, gram, zty, zsum, ysum, n


def _predict_block(x, est):
    return est.predict(x)


def predict_kernel_ridge(est, X):
    """``KernelRidge.predict`` of a Dask ``X``: a lazy Dask array, one task per row chunk."""
    X = _check_array(X, "X", est)
    shape = (X.chunks[0],) if est.coef_.ndim == 1 else (X.chunks[0], (est.coef_.shape[1],))
    return X.map_blocks(_predict_block, est, dtype=np.float64, chunks=shape,
                        drop_axis=list(range(1 if est.coef_.ndim == 1 else 2, X.ndim)))
