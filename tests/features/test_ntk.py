"""Fully-connected ReLU NTK / NNGP: exact oracles, NTKRandomFeatures and NTKSketch."""

import math

import numpy as np
import pytest
import torch

from kernelsketch.features.activations import dual_activation
from kernelsketch.features.ntk import nngp_relu, ntk_relu

f64 = torch.float64


def _unit_rows(n, d):
    X = torch.randn(n, d, dtype=f64)
    return X / X.norm(dim=1, keepdim=True)


# ----------------------------------------------------------------------------- exact oracles


def test_depth1_ntk_matches_arccos_formula():
    X, Y = torch.randn(7, 5, dtype=f64), torch.randn(4, 5, dtype=f64)
    nx, ny = X.norm(dim=1)[:, None], Y.norm(dim=1)[None, :]
    t = (X @ Y.T / (nx * ny)).clamp(-1, 1)
    theta = torch.arccos(t)
    # Theta^(1) = <x,y> (pi - theta)/pi + |x||y| (sin theta + (pi - theta) cos theta)/pi
    want = X @ Y.T * (math.pi - theta) / math.pi + nx * ny * (
        torch.sin(theta) + (math.pi - theta) * t
    ) / math.pi
    torch.testing.assert_close(ntk_relu(X, Y, depth=1), want, rtol=1e-10, atol=1e-10)


def test_nngp_recursion_is_twice_the_relu_dual_of_the_previous_layer():
    X = torch.randn(6, 4, dtype=f64)
    # Rows of a Cholesky factor of Sigma^(1) have Gram Sigma^(1); one more layer is 2 E[relu relu].
    sigma1 = nngp_relu(X, depth=1) + 1e-12 * torch.eye(6, dtype=f64)
    L = torch.linalg.cholesky(sigma1)
    torch.testing.assert_close(nngp_relu(X, depth=2), 2 * dual_activation("relu", L), atol=1e-9, rtol=1e-9)


def test_depth1_ntk_is_mean_gradient_inner_product_of_random_networks():
    # f(x) = sqrt(2/m) v . relu(W x): E_{W,v}[<grad f(x), grad f(y)>] = Theta^(1) exactly.
    g = torch.Generator().manual_seed(0)
    X = torch.randn(5, 3, dtype=f64)
    m = 200_000
    W = torch.randn(m, 3, generator=g, dtype=f64)
    v = torch.randn(m, generator=g, dtype=f64)
    pre = X @ W.T
    grad_v = math.sqrt(2 / m) * torch.relu(pre)
    step = (pre > 0).to(f64) * v
    emp = grad_v @ grad_v.T + (2 / m) * (step @ step.T) * (X @ X.T)
    torch.testing.assert_close(emp, ntk_relu(X, depth=1), rtol=0.02, atol=0.02)


def test_deep_ntk_matches_empirical_ntk_of_a_wide_network():
    g = torch.Generator().manual_seed(1)
    depth, width = 2, 2048
    X = _unit_rows(4, 5)
    dims = [5] + [width] * depth
    Ws = [torch.randn(dims[i + 1], dims[i], generator=g, dtype=f64, requires_grad=True) for i in range(depth)]
    v = torch.randn(width, generator=g, dtype=f64, requires_grad=True)
    params = Ws + [v]
    grads = []
    for x in X:
        h = x
        for i, W in enumerate(Ws):  # NTK parameterisation; Sigma^(0) = <x, y> (no 1/d)
            h = math.sqrt(2) * torch.relu(W @ h / (math.sqrt(h.numel()) if i else 1.0))
        out = v @ h / math.sqrt(width)
        grads.append(torch.cat([gr.reshape(-1) for gr in torch.autograd.grad(out, params)]))
    G = torch.stack(grads)
    K = ntk_relu(X, depth=depth)
    assert torch.linalg.norm(G @ G.T - K) / torch.linalg.norm(K) < 0.1


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_diagonal_and_homogeneity(depth):
    X, Y = torch.randn(5, 3, dtype=f64), torch.randn(2, 3, dtype=f64)
    sq = (X * X).sum(1)
    torch.testing.assert_close(ntk_relu(X, depth=depth).diagonal(), (depth + 1) * sq)
    torch.testing.assert_close(nngp_relu(X, depth=depth).diagonal(), sq)
    s = 2.5
    torch.testing.assert_close(ntk_relu(s * X, Y, depth=depth), s * ntk_relu(X, Y, depth=depth))
    torch.testing.assert_close(nngp_relu(X, s * Y, depth=depth), s * nngp_relu(X, Y, depth=depth))


def test_kernels_are_symmetric_psd_and_numpy_in_numpy_out():
    X = np.random.default_rng().standard_normal((8, 4))
    for k in (ntk_relu, nngp_relu):
        K = k(X, depth=2)
        assert isinstance(K, np.ndarray)
        np.testing.assert_allclose(K, K.T, atol=1e-12)
        assert np.linalg.eigvalsh(K).min() > -1e-9


def test_oracle_zero_rows_give_zero_kernel():
    X = torch.randn(3, 4, dtype=f64)
    X[1] = 0
    K = ntk_relu(X, depth=2)
    assert torch.all(K[1] == 0) and torch.isfinite(K).all()


def test_oracle_rejects_bad_depth_value():
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        ntk_relu(torch.ones(2, 2), depth=0)


def test_oracle_rejects_non_int_depth():
    with pytest.raises(TypeError, match="depth must be an int"):
        nngp_relu(torch.ones(2, 2), depth=1.5)


def test_oracle_rejects_mismatched_feature_dims():
    with pytest.raises(ValueError, match=r"Y must have the trailing shape \[3\] of X, got \[2\]"):
        ntk_relu(torch.ones(2, 3), torch.ones(2, 2))


def test_oracle_rejects_wrong_rank():
    with pytest.raises(ValueError, match="X must have 2 dimensions"):
        ntk_relu(torch.ones(2, 3, 1))


def test_oracle_rejects_nan():
    X = torch.ones(2, 3)
    X[0, 0] = float("nan")
    with pytest.raises(ValueError, match="X must be finite"):
        nngp_relu(X)


def test_oracle_rejects_integer_dtype():
    with pytest.raises(TypeError, match="X must have dtype"):
        ntk_relu(torch.ones(2, 3, dtype=torch.int64))
