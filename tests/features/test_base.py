"""The shared scikit-learn scaffolding, exercised through a minimal random-projection subclass."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from kernelsketch._checks import check_int
from kernelsketch.features._base import (
    RandomFeaturesTransformer,
    torch_generator_from_random_state,
)


class _Projection(torch.nn.Module):
    def __init__(self, d_in, d_out, generator):
        super().__init__()
        w = torch.randn(d_in, d_out, generator=generator, dtype=torch.float64)
        self.register_buffer("w", w / d_out**0.5)
        self.d_out = d_out

    def forward(self, x):
        return x @ self.w.to(x.dtype)


class _RandomProjection(RandomFeaturesTransformer):
    def __init__(self, *, n_components=8, random_state=None):
        self.n_components = n_components
        self.random_state = random_state

    def _check_params(self, n_features):
        check_int("n_components", self.n_components, min=1)

    def _make_feature_map(self, n_features, generator, X):
        return _Projection(n_features, self.n_components, generator)


@parametrize_with_checks([_RandomProjection()])
def test_sklearn_conventions(estimator, check):
    check(estimator)


def test_float32_preserved_and_feature_names(np_rng):
    X = np_rng.standard_normal((5, 3)).astype(np.float32)
    est = _RandomProjection(n_components=4, random_state=0).fit(X)
    assert est.transform(X).dtype == np.float32
    assert list(est.get_feature_names_out()) == [f"_randomprojection{i}" for i in range(4)]


def test_same_random_state_same_features_and_different_otherwise(np_rng):
    X = np_rng.standard_normal((6, 3))
    a = _RandomProjection(random_state=3).fit_transform(X)
    b = _RandomProjection(random_state=3).fit_transform(X)
    c = _RandomProjection(random_state=4).fit_transform(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_generator_from_random_state_is_reproducible():
    a = torch.rand(3, generator=torch_generator_from_random_state(7))
    b = torch.rand(3, generator=torch_generator_from_random_state(np.random.RandomState(7)))
    assert torch.equal(a, torch.rand(3, generator=torch_generator_from_random_state(7)))
    assert a.shape == b.shape


def test_bad_param_is_reported_at_fit():
    with pytest.raises(ValueError, match="n_components must be >= 1, got 0"):
        _RandomProjection(n_components=0).fit(np.ones((3, 2)))


class _SparseProjection(_RandomProjection):
    _accept_sparse = True

    def _transform_sparse(self, X):
        return np.asarray(X @ self.feature_map_.w.numpy())


def test_sparse_input_rejected_by_default():
    X = sp.random(6, 4, density=0.5, format="csr", random_state=0)
    with pytest.raises(TypeError, match="[Ss]parse data was passed"):
        _RandomProjection().fit(X)


def test_sparse_input_routed_to_transform_sparse():
    X = sp.random(6, 4, density=0.5, format="csr", random_state=0)
    est = _SparseProjection(random_state=0).fit(X)
    np.testing.assert_allclose(est.transform(X), est.transform(X.toarray()), atol=1e-12)
    assert est.__sklearn_tags__().input_tags.sparse
    assert not _RandomProjection().__sklearn_tags__().input_tags.sparse


def test_bad_random_state_is_reported_at_fit_by_name():
    X = np.ones((3, 2))
    with pytest.raises(TypeError, match="random_state must be None, an int or a numpy.random"):
        _RandomProjection(random_state=np.random.default_rng(0)).fit(X)
    with pytest.raises(TypeError, match="random_state must be None, an int or a numpy.random"):
        _RandomProjection(random_state="0").fit(X)
    with pytest.raises(ValueError, match=r"random_state must be in \[0, 2\*\*32 - 1\]"):
        _RandomProjection(random_state=-1).fit(X)


def test_none_random_state_uses_numpy_global_state():
    # scikit-learn's meaning: None draws from numpy's global RandomState.
    X = np.random.RandomState(0).standard_normal((4, 3))
    np.random.seed(11)
    a = _RandomProjection(random_state=None).fit_transform(X)
    np.random.seed(11)
    np.testing.assert_array_equal(a, _RandomProjection(random_state=None).fit_transform(X))


def _feature_maps():
    from kernelsketch.features._horner import HornerSketch
    from kernelsketch.features.activations import ACTIVATIONS, ActivationSketchMap
    from kernelsketch.features.cntk import CNTKSketchMap
    from kernelsketch.features.ntk import NTKRandomFeatureMap, NTKSketchMap

    return {
        "NTKRandomFeatureMap": (lambda **r: NTKRandomFeatureMap(
            4, depth=1, n_arccos=8, d_out=8, kernel="ntk", **r), (3, 4)),
        "NTKSketchMap": (lambda **r: NTKSketchMap(
            4, depth=1, n_components=8, degree=3, kernel="ntk", **r), (3, 4)),
        "CNTKSketchMap": (lambda **r: CNTKSketchMap(
            (1, 3, 3), depth=1, filter_size=3, n_components=8, pixel_dim=4, degree=2, **r),
            (3, 1, 3, 3)),
        "ActivationSketchMap": (lambda **r: ActivationSketchMap(
            4, activation=ACTIVATIONS["erf"], depth=2, degree=3, n_components=8, kernel="ntk",
            bias_var=0.5, **r), (3, 4)),
        "HornerSketch": (lambda **r: _PowerSeries(HornerSketch(4, 2, 8, **r)), (3, 4)),
    }


class _PowerSeries(torch.nn.Module):
    def __init__(self, series):
        super().__init__()
        self.series = series

    def forward(self, x):
        return self.series(x, torch.ones(3, dtype=x.dtype))


@pytest.mark.parametrize("name", sorted(_feature_maps()))
def test_feature_maps_own_fixed_randomness_from_seed(name):
    # Torch feature maps draw their sketches once, from seed= or generator= (one of the two).
    build, shape = _feature_maps()[name]
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = build(seed=5).double()(x)
        b = build(generator=torch.Generator().manual_seed(5)).double()(x)
        c = build(seed=6).double()(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    with pytest.raises(ValueError, match="give either seed or generator, not both"):
        build(seed=5, generator=torch.Generator())
