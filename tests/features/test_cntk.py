"""Convolutional NTK: exact oracle and CNTKSketch."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernelsketch.features.cntk import cnngp_relu, cntk_relu, pixel_variances
from kernelsketch.features.ntk import ntk_relu

f64 = torch.float64


# ----------------------------------------------------------------------------- exact oracle


@pytest.mark.parametrize("depth", [1, 3])
def test_one_pixel_cntk_is_the_fully_connected_ntk(depth, torch_generator):
    X = torch.randn(5, 4, dtype=f64, generator=torch_generator)
    torch.testing.assert_close(
        cntk_relu(X[:, :, None, None], depth=depth, filter_size=1),
        ntk_relu(X, depth=depth),
        rtol=1e-7,
        atol=1e-7,
    )


def test_pointwise_filters_give_pooled_fully_connected_ntk(torch_generator):
    X, Y = torch.randn(3, 2, 3, 3, dtype=f64, generator=torch_generator), torch.randn(2, 2, 3, 3, dtype=f64, generator=torch_generator)
    px, py = (
        X.flatten(2).transpose(1, 2).reshape(-1, 2),
        Y.flatten(2).transpose(1, 2).reshape(-1, 2),
    )
    want = ntk_relu(px, py, depth=2).reshape(3, 9, 2, 9).mean((1, 3))
    torch.testing.assert_close(cntk_relu(X, Y, depth=2, filter_size=1), want, rtol=1e-7, atol=1e-7)


def test_depth1_cntk_and_cnngp_match_monte_carlo_over_random_filters(torch_generator):
    # One conv layer: pre-activations are exactly Gaussian, so these averages are unbiased.
    g = torch.Generator().manual_seed(0)
    q, n_filters = 3, 40_000
    X = torch.randn(4, 2, 4, 4, dtype=f64, generator=torch_generator)
    W = torch.randn(n_filters, 2, q, q, generator=g, dtype=f64) / q
    f = F.conv2d(X, W, padding=q // 2)  # [n, S, H, W]
    gap = (math.sqrt(2) * torch.relu(f)).mean((2, 3))
    nngp_mc = gap @ gap.T / n_filters
    patches = F.unfold(X, q, padding=q // 2) / q  # pixel patches [n, C q q, P]
    sigma_f = torch.einsum("akp,bkr->abpr", patches, patches)
    step = math.sqrt(2) * (f > 0).to(f64).flatten(2)
    theta_mc = torch.einsum("abpr,asp,bsr->ab", sigma_f, step, step) / n_filters / 16**2
    torch.testing.assert_close(cnngp_relu(X, depth=1), nngp_mc, rtol=0.02, atol=0.01)
    torch.testing.assert_close(cntk_relu(X, depth=1), nngp_mc + theta_mc, rtol=0.02, atol=0.01)


def test_cntk_symmetric_psd_homogeneous_and_numpy(np_rng):
    X = np_rng.standard_normal((6, 1, 5, 5))
    K = cntk_relu(X, depth=2)
    assert isinstance(K, np.ndarray)
    np.testing.assert_allclose(K, K.T, atol=1e-12)
    assert np.linalg.eigvalsh(K).min() > -1e-9
    np.testing.assert_allclose(cntk_relu(3 * X, depth=2), 9 * K, rtol=1e-9)


def test_cntk_blocking_does_not_change_the_result(torch_generator):
    from kernelsketch.features.cntk import _cntk_both

    X = torch.randn(5, 1, 4, 4, dtype=f64, generator=torch_generator)
    full = _cntk_both(X, None, 2, 3)[1]
    blocked = _cntk_both(X, None, 2, 3, block_elems=1)[1]
    torch.testing.assert_close(full, blocked)


def test_pixel_variances_are_box_filtered_squared_norms(torch_generator):
    X = torch.randn(2, 3, 5, 5, dtype=f64, generator=torch_generator)
    v = pixel_variances(X, 2, 3)
    torch.testing.assert_close(v[0], (X * X).sum(1))
    torch.testing.assert_close(v[1][:, 2, 2], (X * X).sum(1)[:, 1:4, 1:4].mean((1, 2)))
    torch.testing.assert_close(v[1][:, 0, 0], (X * X).sum(1)[:, :2, :2].sum((1, 2)) / 9)


def test_cntk_rejects_even_filter_size():
    with pytest.raises(ValueError, match="filter_size must be odd"):
        cntk_relu(torch.ones(2, 1, 3, 3), filter_size=2)


def test_cntk_rejects_flat_input():
    with pytest.raises(ValueError, match="X must have 4 dimensions"):
        cntk_relu(torch.ones(2, 9))


def test_cntk_rejects_mismatched_image_shape():
    with pytest.raises(ValueError, match="Y must have the trailing shape"):
        cntk_relu(torch.ones(2, 1, 3, 3), torch.ones(2, 1, 4, 4))


def test_cntk_rejects_bad_depth():
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        cnngp_relu(torch.ones(2, 1, 3, 3), depth=0)


# ----------------------------------------------------------------------------- CNTKSketch

from sklearn.utils.estimator_checks import parametrize_with_checks

from kernelsketch.features.cntk import CNTKSketch


def _rel_fro(Z, K):
    Z, K = np.asarray(Z, dtype=np.float64), np.asarray(K, dtype=np.float64)
    return np.linalg.norm(Z @ Z.T - K) / np.linalg.norm(K)


@parametrize_with_checks(
    [
        CNTKSketch(n_components=8, pixel_dim=4, degree=2, depth=2),
    ]
)
def test_sklearn_conventions(estimator, check):
    check(estimator)


@pytest.mark.statistical
@pytest.mark.parametrize("kernel", ["ntk", "nngp"])
def test_sketch_error_falls_with_budget(kernel, seed, torch_generator, measure):
    X = torch.randn(24, 2, 5, 5, dtype=f64, generator=torch_generator)
    K = (cntk_relu if kernel == "ntk" else cnngp_relu)(X, depth=1)
    flat = X.reshape(24, -1).numpy()
    errs = [
        _rel_fro(
            CNTKSketch(
                n_components=m, pixel_dim=p, kernel=kernel, image_shape=(2, 5, 5), random_state=seed
            ).fit_transform(flat),
            K,
        )
        for m, p in ((32, 8), (1024, 256))
    ]
    measure("large", errs[1])
    measure("ratio", errs[1] / errs[0])
    assert errs[1] <= 0.1 and errs[1] < errs[0] / 2


def test_two_layer_sketch_error_is_small(torch_generator):
    X = torch.randn(16, 1, 4, 4, dtype=f64, generator=torch_generator)
    K = cntk_relu(X, depth=2)
    Z = CNTKSketch(depth=2, n_components=1024, pixel_dim=256, random_state=0).fit_transform(
        X.reshape(16, -1).numpy()
    )
    assert _rel_fro(Z, K) <= 0.15


def test_torch_map_takes_image_batches_and_is_homogeneous(torch_generator):
    X = torch.randn(6, 3, 4, 4, generator=torch_generator)
    est = CNTKSketch(n_components=16, image_shape=(3, 4, 4), random_state=0).fit(
        X.reshape(6, -1).numpy()
    )
    Z = est.transform(X.reshape(6, -1).numpy())
    assert Z.dtype == np.float32 and Z.shape == (6, 16)
    torch.testing.assert_close(est.feature_map_(X), torch.from_numpy(Z))
    torch.testing.assert_close(
        est.feature_map_(2.0 * X), 2.0 * torch.from_numpy(Z), rtol=1e-4, atol=1e-5
    )


def test_image_shape_is_inferred_for_square_inputs(np_rng):
    est = CNTKSketch(n_components=8, pixel_dim=4, random_state=0).fit(
        np_rng.random((3, 16))
    )
    assert est.image_shape_ == (1, 4, 4)


@pytest.mark.parametrize(
    "params, exc, msg",
    [
        (
            {"image_shape": (1, 3, 3)},
            ValueError,
            r"image_shape \(1, 3, 3\) must have C\*H\*W = n_features = 16, got 9",
        ),
        ({"image_shape": (4, 4)}, ValueError, "image_shape must be \\(C, H, W\\) of positive ints"),
        ({"filter_size": 4}, ValueError, "filter_size must be odd"),
        ({"depth": 0}, ValueError, "depth must be >= 1, got 0"),
        ({"pixel_dim": 0}, ValueError, "pixel_dim must be >= 1, got 0"),
        ({"kernel": "rbf"}, ValueError, "kernel must be one of"),
        ({"degree": 0}, ValueError, "degree must be >= 1, got 0"),
    ],
)
def test_cntk_sketch_bad_params(params, exc, msg):
    with pytest.raises(exc, match=msg):
        CNTKSketch(**params).fit(np.ones((3, 16)))
