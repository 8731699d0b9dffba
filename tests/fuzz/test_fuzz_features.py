"""Fuzz the kernel feature maps and exact kernels of kernelsketch.features (issue 21).

Contract (tests/fuzz/contract.py, numpy_inputs.py): a ValueError / TypeError
naming an argument, or finite features of shape (n_samples, n_features_out)
(float32 for float32 input, float64 otherwise); no input modified; bounded time.
Every transformer is fuzzed through its scikit-learn interface with small data and
parameters around its limits; the exact kernels on small inputs.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kernelsketch.features as F
from tests.fuzz.numpy_inputs import check, finite

pytestmark = [pytest.mark.timeout(180), pytest.mark.filterwarnings("ignore")]

ELEMENTS = st.one_of(
    st.floats(-3, 3),
    st.floats(-3, 3),
    st.sampled_from([0.0, np.nan, np.inf, -1e300, 1e-300, 1e30, -1e20]),
)
X_DTYPES = st.sampled_from(["float64", "float64", "float32", "int64", "bool", "complex128", "<U2"])


@st.composite
def data_matrices(draw, min_rows=0, max_rows=8, max_cols=6):
    dtype = draw(X_DTYPES)
    if draw(st.integers(0, 9)) == 0:  # occasionally a wrong rank
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
    else:
        shape = (draw(st.integers(min_rows, max_rows)), draw(st.integers(0, max_cols)))
    if dtype == "<U2":
        return draw(hnp.arrays(dtype, shape))
    arr = draw(hnp.arrays("float64", shape, elements=ELEMENTS))
    with np.errstate(invalid="ignore", over="ignore"):
        return arr.astype(dtype)


N_COMPONENTS = st.one_of(st.integers(1, 40), st.sampled_from([0, -1, 2**40, 2.5, None]))
RANDOM_STATE = st.one_of(st.integers(0, 3), st.sampled_from([-1, 2**33, 1.5, "x"]))
POS = st.one_of(st.floats(0.05, 4.0), st.sampled_from([0.0, -1.0, np.nan, np.inf, 1e300]))
DEGREE = st.one_of(st.integers(1, 4), st.sampled_from([0, -1, 2**31, 2.0]))

TRANSFORMERS = {
    "PolynomialSketch": lambda d: F.PolynomialSketch(
        n_components=d(N_COMPONENTS), degree=d(DEGREE), gamma=d(POS), coef0=d(POS),
        kind=d(st.sampled_from(["tensorsketch", "srht", "gaussian", "x"])),
        random_state=d(RANDOM_STATE)),
    "PolynomialLeverageSampler": lambda d: F.PolynomialLeverageSampler(
        n_components=d(N_COMPONENTS), degree=d(DEGREE), gamma=d(POS), coef0=d(POS),
        sketch_size=d(st.one_of(st.integers(1, 64), st.sampled_from([0, 2**40]))),
        random_state=d(RANDOM_STATE)),
    "WeightedRandomBinning": lambda d: F.WeightedRandomBinning(
        n_components=d(N_COMPONENTS), kernel=d(st.sampled_from(["gaussian", "laplacian",
                                                                  "matern", "x"])),
        length_scale=d(POS), nu=d(POS), weight_order=d(st.integers(0, 7)),
        random_state=d(RANDOM_STATE)),
    "RLSNystroem": lambda d: F.RLSNystroem(
        n_components=d(N_COMPONENTS), kernel=d(st.sampled_from(["rbf", "laplacian", "poly",
                                                                  "linear", "x"])),
        gamma=d(st.one_of(st.none(), POS)), random_state=d(RANDOM_STATE)),
    "GegenbauerFeatures": lambda d: F.GegenbauerFeatures(
        kernel=d(st.sampled_from(["gaussian", "ntk", "x"])), degree=d(DEGREE),
        n_components=d(N_COMPONENTS), gamma=d(POS), random_state=d(RANDOM_STATE)),
    "NTKRandomFeatures": lambda d: F.NTKRandomFeatures(
        depth=d(st.integers(0, 3)), kernel=d(st.sampled_from(["ntk", "nngp", "x"])),
        n_components=d(N_COMPONENTS), random_state=d(RANDOM_STATE)),
    "NTKSketch": lambda d: F.NTKSketch(
        depth=d(st.integers(0, 3)), kernel=d(st.sampled_from(["ntk", "nngp", "x"])),
        n_components=d(N_COMPONENTS), degree=d(DEGREE), random_state=d(RANDOM_STATE)),
    "ActivationKernelSketch": lambda d: F.ActivationKernelSketch(
        activation=d(st.sampled_from(["relu", "erf", "gelu", "x"])), depth=d(st.integers(0, 3)),
        n_components=d(N_COMPONENTS), degree=d(DEGREE), random_state=d(RANDOM_STATE)),
}
# scikit-learn's own input validation (check_array) names X by what it expected: "Expected
# 2D array", "Found array with 0 sample(s)", "Complex data not supported", "could not convert
# string to float"; these count as naming X
SKLEARN_X = ("array", "sample", "feature", "Complex data", "string")
NAMES = ("X", "n_components", "degree", "gamma", "coef0", "kind", "random_state",
         "sketch_size", "kernel", "length_scale", "nu", "weight_order", "depth", "activation",
         "n_features", "n_samples", *SKLEARN_X)


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
@settings(max_examples=25)
@given(data=st.data())
def test_transformer(name, data):
    make = TRANSFORMERS[name]
    est = check(make, data.draw, names=NAMES)
    if est is None:
        return
    X = data.draw(data_matrices(), label="X")
    Z = check(est.fit_transform, X, names=NAMES)
    if Z is None:
        return
    Z = Z.toarray() if hasattr(Z, "toarray") else np.asarray(Z)
    assert Z.ndim == 2 and Z.shape[0] == X.shape[0] and finite(Z)
    assert Z.dtype == (np.float32 if X.dtype == np.float32 else np.float64)
    Z2 = check(est.transform, X[:2], names=NAMES)
    assert Z2 is None or np.asarray(Z2.toarray() if hasattr(Z2, "toarray") else Z2).shape[1] \
        == Z.shape[1]


@settings(max_examples=25)
@given(data=st.data(), cnn_kernel=st.sampled_from(["ntk", "nngp"]))
def test_cntk_sketch(data, cnn_kernel):
    est = check(lambda: F.CNTKSketch(
        kernel=cnn_kernel, depth=data.draw(st.integers(0, 2)),
        filter_size=data.draw(st.sampled_from([1, 3, 0, 4])),
        n_components=data.draw(N_COMPONENTS),
        image_shape=data.draw(st.sampled_from([None, (1, 2, 2), (2, 3, 3), (0, 1, 1)])),
        random_state=data.draw(RANDOM_STATE)), names=(*NAMES, "filter_size", "image_shape"))
    if est is None:
        return
    X = data.draw(data_matrices(max_cols=18))
    Z = check(est.fit_transform, X, names=(*NAMES, "filter_size", "image_shape"))
    if Z is not None:
        assert Z.shape[0] == X.shape[0] and finite(Z)


@settings(max_examples=25)
@given(X=data_matrices(min_rows=1), alpha=POS,
       solver=st.sampled_from(["auto", "cholesky", "cg", "x"]))
def test_kernel_ridge(X, alpha, solver):
    rng = np.random.default_rng(0)
    y = rng.normal(size=X.shape[0]) if X.ndim == 2 else np.zeros(3)
    est = check(F.KernelRidge, F.PolynomialSketch(n_components=8, random_state=0),
                alpha=alpha, solver=solver, names=("alpha", "solver"))
    if est is None:
        return
    fitted = check(est.fit, X, y, names=(*NAMES, "y", "alpha", "solver"))
    if fitted is not None:
        assert finite(fitted.predict(X))


EXACT = {
    "ntk_relu": lambda X, d: F.ntk_relu(X, depth=d),
    "nngp_relu": lambda X, d: F.nngp_relu(X, depth=d),
    "zonal_kernel": lambda X, d: F.zonal_kernel(X, X, d),
    "gzk_kernel": lambda X, d: F.gzk_kernel(X, degree=d),
    "weighted_binning_kernel": lambda X, d: F.weighted_binning_kernel(X, weight_order=d),
    "dual_activation": lambda X, d: F.dual_activation("relu", X, depth=d),
    "neural_kernel": lambda X, d: F.neural_kernel(X, depth=d),
}


@pytest.mark.parametrize("name", sorted(EXACT))
@settings(max_examples=30)
@given(X=data_matrices(), d=st.one_of(st.integers(0, 3), st.sampled_from([-1, 2**31, 1.5])),
       as_tensor=st.booleans())
def test_exact_kernels(name, X, d, as_tensor):
    if as_tensor and X.dtype.kind in "fc":
        X = torch.from_numpy(X.copy())
    K = check(EXACT[name], X, d, names=("X", "Y", "depth", "degree", "weight_order"))
    if K is not None:
        assert K.shape == (X.shape[0], X.shape[0]) and finite(K)
