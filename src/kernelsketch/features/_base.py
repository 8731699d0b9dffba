"""Shared scikit-learn scaffolding for the randomized kernel feature transformers.

A transformer in :mod:`kernelsketch.features` is a thin scikit-learn shell around
a ``torch.nn.Module`` feature map whose random draws are made once, in ``fit``,
from ``random_state``. Subclasses implement two hooks:

- ``_check_params(n_features)``: validate constructor parameters with
  :mod:`kernelsketch._checks` (scikit-learn forbids validation in ``__init__``);
- ``_make_feature_map(n_features, generator, X) -> torch.nn.Module``: build the
  map ``[n, n_features] -> [n, d_out]`` (with an int attribute ``d_out``) from the
  seeded ``generator``; ``X`` is the training data as a tensor, used only by
  data-dependent maps (leverage-score sampling).

The base class does the rest: input validation (2-D, finite, float32/float64),
the seeded ``torch.Generator``, float32 preservation, ``n_features_in_``,
``get_feature_names_out`` and the scikit-learn tags. The fitted map is kept in
``feature_map_``; move it to a GPU and call it on torch batches directly
(``est.feature_map_.to("cuda")(X_cuda)``).

Sparse input is rejected unless a subclass sets ``_accept_sparse = True``; it
then receives scipy CSR matrices as ``X`` in ``_make_feature_map`` and must
implement ``_transform_sparse(X_csr) -> array or sparse matrix``.

Dask arrays: ``transform`` maps them lazily, chunk by chunk; ``fit`` takes them
when the subclass sets ``_fit_reads_data = False`` (the map depends on the
number of features only) and raises ``TypeError`` otherwise
(:mod:`kernelsketch.distributed.dask`).
"""

from __future__ import annotations

import sys

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from kernelsketch._checks import check_allocation, check_random_state
from kernelsketch.distributed.dask import fit_transformer, is_dask_array
from kernelsketch.distributed.dask import transform as dask_transform

__all__ = ["Progress", "RandomFeaturesTransformer", "check_points",
           "torch_generator_from_random_state"]


def check_points(X, Y=None) -> tuple[np.ndarray, np.ndarray]:
    """``X`` (n, d) and ``Y`` (m, d) (``Y = X`` when ``None``) as finite real float64 matrices
    (the exact kernels' inputs); ``TypeError`` / ``ValueError`` naming the argument."""
    out = []
    for name, A in (("X", X), ("Y", X if Y is None else Y)):
        A = np.asarray(A)
        if A.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {A.dtype}")
        if A.ndim != 2:
            raise ValueError(f"{name} must have shape (n, d), got shape {A.shape}")
        A = A.astype(np.float64)
        if not np.all(np.isfinite(A)):
            raise ValueError(f"{name} must be finite, found NaN or infinite values")
        out.append(A)
    if out[0].shape[1] != out[1].shape[1]:
        raise ValueError(f"Y must have {out[0].shape[1]} columns like X, got {out[1].shape[1]}")
    return out[0], out[1]


class Progress:
    """Steps of a long fit, scikit-learn's ``verbose`` convention.

    ``verbose = 0``: silent. ``>= 1``: a tqdm bar named ``name`` (``total`` steps when known)
    whose postfix says the current step, kept on screen when ``verbose >= 2``; without tqdm,
    one line per step on stderr. ``progress(what)`` advances one step (``advance=0``: only
    says what is running); ``close(summary)`` ends the bar.
    """

    def __init__(self, verbose: int, name: str, total: int | None = None):
        self.verbose, self.name, self.bar = verbose, name, None
        if verbose:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=name, leave=verbose > 1)
            except ImportError:
                self.bar = None

    def __call__(self, what: str, advance: int = 1) -> None:
        if not self.verbose:
            return
        if self.bar is not None:
            self.bar.update(advance)
            self.bar.set_postfix_str(what)
        else:
            print(f"[{self.name}] {what}", file=sys.stderr)

    def close(self, summary: str) -> None:
        if not self.verbose:
            return
        if self.bar is not None:
            if self.bar.total is not None:
                self.bar.update(self.bar.total - self.bar.n)
            self.bar.set_postfix_str(summary)
            self.bar.close()
        else:
            print(f"[{self.name}] done: {summary}", file=sys.stderr)


def torch_generator_from_random_state(random_state) -> torch.Generator:
    """Return a CPU ``torch.Generator`` seeded from a scikit-learn ``random_state``.

    Parameters
    ----------
    random_state : int, numpy.random.RandomState or None
        scikit-learn's meaning: ``None`` draws the seed from numpy's global
        RandomState, an int or a RandomState gives reproducible draws.

    Returns
    -------
    torch.Generator
        Seeded with an int drawn from ``check_random_state(random_state)``.

    Raises
    ------
    TypeError
        If ``random_state`` is not None, an int or a RandomState (the message
        names ``random_state``).
    """
    seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
    return torch.Generator().manual_seed(seed)


def _check_finite_output(Z, X):
    """``Z``, or ``ValueError`` when finite ``X`` gave non-finite features (overflow)."""
    data = Z.data if sp.issparse(Z) else Z
    # one reduction, no (n, m) mask: a finite sum is a finite Z (an overflowing sum is checked)
    if not np.isfinite(data.sum()) and not np.isfinite(data).all():
        big = float(abs(X).max())
        raise ValueError(
            f"X's scale overflows the features in {np.dtype(Z.dtype).name} (largest |X| = "
            f"{big:.3g}): the kernel values are not representable; rescale X (and gamma / "
            "length_scale with it) or pass float64"
        )
    return Z


def _map_rows(feature_map, X: torch.Tensor, verbose, name: str, block: int = 256):
    """``feature_map(X)``; with ``verbose`` >= 1, in blocks of rows on a tqdm bar (kept if >= 2)."""
    if not verbose or X.shape[0] <= block:
        return feature_map(X)
    starts = range(0, X.shape[0], block)
    try:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"{name}.transform", unit="block", leave=verbose > 1)
    except ImportError:  # tqdm is optional: no bar
        pass
    return torch.cat([feature_map(X[i : i + block]) for i in starts])


class RandomFeaturesTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Base class: a randomized feature map drawn in ``fit``, applied in ``transform``.

    Attributes set by ``fit``
    -------------------------
    feature_map_ : torch.nn.Module
        The fitted map (float64 buffers on CPU); callable on torch tensors
        ``[..., n_features_in_]`` of any float dtype and device after ``.to(device)``.
    n_features_in_ : int
    """

    # Subclasses may allow images given as [n, C, H, W] arrays (flattened internally).
    _allow_nd = False
    # Subclasses that handle scipy sparse input (CSR) set this and implement _transform_sparse.
    _accept_sparse = False
    # Subclasses whose map depends on n_features and random_state only (not on the rows)
    # set this to False: fit then takes Dask arrays without computing them.
    _fit_reads_data = True

    def _check_params(self, n_features: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _make_feature_map(
        self, n_features: int, generator: torch.Generator, X: torch.Tensor
    ) -> torch.nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def _transform_sparse(self, X: sp.csr_matrix):  # pragma: no cover - abstract
        raise NotImplementedError

    def _validate_X(self, X, *, reset: bool):
        if is_dask_array(X):
            raise TypeError(
                f"X must be an in-memory array for {type(self).__name__}.fit, which reads the "
                "data: fit it on an in-memory array (transform takes Dask arrays), got a Dask array"
            )
        if self._accept_sparse and sp.issparse(X):
            return validate_data(self, X, reset=reset, accept_sparse="csr",
                                 dtype=[np.float64, np.float32], ensure_all_finite=True)
        X = validate_data(
            self,
            X,
            reset=reset,
            dtype=[np.float64, np.float32],
            accept_sparse=False,
            ensure_all_finite=True,
            allow_nd=self._allow_nd,
        )
        if X.ndim > 2:
            X = X.reshape(X.shape[0], -1)
        # torch.from_numpy needs a writable, C-ordered buffer (copies only if X is not).
        return np.require(X, requirements=["C", "W"])

    def fit(self, X, y=None):
        """Draw the random feature map for inputs shaped like ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data; only its number of features is used (and its values
            by data-dependent variants such as leverage-score sampling). Scipy
            sparse where the subclass accepts it.
        y : ignored

        Returns
        -------
        self
        """
        if is_dask_array(X):
            return fit_transformer(self, X)
        return self._fit_validated(self._validate_X(X, reset=True))

    def _fit_validated(self, X):
        self._check_params(X.shape[1])
        generator = torch_generator_from_random_state(self.random_state)
        data = X if sp.issparse(X) else torch.from_numpy(X)
        self.feature_map_ = self._make_feature_map(X.shape[1], generator, data)
        self._n_features_out = int(self.feature_map_.d_out)
        return self

    def fit_transform(self, X, y=None):
        """``fit(X).transform(X)``, validating ``X`` once (its cost is fixed per call: a
        quarter of a small fit+transform's time on 200 rows).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored

        Returns
        -------
        Z : ndarray of shape (n_samples, n_features_out), as :meth:`transform`
        """
        if is_dask_array(X):
            return self.fit(X).transform(X)
        X = self._validate_X(X, reset=True)
        return self._fit_validated(X)._transform_validated(X)

    def transform(self, X):
        """Map ``X`` to random features.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        Z : ndarray of shape (n_samples, n_features_out), float32 for float32 input, else float64
            ``Z @ Z.T`` approximates the kernel matrix of ``X``. Sparse input (where
            accepted) gives what ``_transform_sparse`` returns; a Dask array, a lazy
            Dask array computed chunk by chunk.
        """
        check_is_fitted(self, "feature_map_")
        if is_dask_array(X):
            return dask_transform(self, X)
        return self._transform_validated(self._validate_X(X, reset=False))

    def _transform_validated(self, X):
        check_allocation(X.shape[0] * self._n_features_out * X.dtype.itemsize,
                         f"the (n_samples, n_features_out) = ({X.shape[0]}, "
                         f"{self._n_features_out}) output of {type(self).__name__}.transform",
                         "transform X in blocks of rows or use fewer n_components")
        if sp.issparse(X):
            return _check_finite_output(self._transform_sparse(X), X)
        with torch.no_grad():
            # Estimators with a ``verbose`` parameter show progress (scikit-learn's convention).
            Z = _map_rows(self.feature_map_, torch.from_numpy(X), getattr(self, "verbose", 0),
                          type(self).__name__)
        return _check_finite_output(Z.numpy(), X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.input_tags.sparse = self._accept_sparse
        tags.non_deterministic = False
        return tags
