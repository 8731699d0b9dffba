"""KernelRidge and the feature maps on Dask arrays (a local Dask cluster of 2 processes)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="the optional 'dask' extra is not installed")
distributed = pytest.importorskip("distributed", reason="the optional 'dask' extra is not installed")

from kernelsketch.features import (
    GegenbauerFeatures,
    KernelRidge,
    NTKRandomFeatures,
    PolynomialLeverageSampler,
    PolynomialSketch,
    RLSNystroem,
    WeightedRandomBinning,
)

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "distributed" / "krr_memory.py"


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                 dashboard_address=None) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def _data(seed, n=1500, d=4, targets=1):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, d))
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2] + 0.1 * rng.normal(size=n)
    if targets > 1:
        y = np.c_[y, X[:, 3] ** 2][:, :targets]
    return X, y


FEATURES = [
    PolynomialSketch(degree=2, n_components=48, coef0=1.0, kind="srht", random_state=3),
    GegenbauerFeatures(n_components=48, gamma=0.05, random_state=4),
]


@pytest.mark.parametrize("features", FEATURES, ids=lambda f: type(f).__name__)
@pytest.mark.parametrize(("targets", "fit_intercept"), [(1, True), (2, False)])
def test_fit_equals_in_memory_fit(client, seed, features, targets, fit_intercept):
    # The per-chunk normal equations summed over chunks are the in-memory ZᵀZ, Zᵀy up to
    # rounding: coefficients and predictions agree to 1e-8 (measured <= 3e-13).
    X, y = _data(seed, targets=targets)
    Xd = da.from_array(X, chunks=(400, 2))  # column chunks are merged
    yd = da.from_array(y, chunks=(250,) + y.shape[1:])  # other row chunks than X
    a = KernelRidge(features, alpha=0.5, fit_intercept=fit_intercept).fit(X, y)
    b = KernelRidge(features, alpha=0.5, fit_intercept=fit_intercept).fit(Xd, yd)
    np.testing.assert_allclose(b.coef_, a.coef_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(b.intercept_, a.intercept_, rtol=0, atol=1e-12)
    assert b.n_features_in_ == a.n_features_in_ == 4
    pred = b.predict(Xd)
    assert isinstance(pred, da.Array) and pred.chunks[0] == Xd.chunks[0]  # lazy
    np.testing.assert_allclose(pred.compute(), a.predict(X), rtol=0, atol=1e-8)
    # in-memory X with Dask y, and Dask X with in-memory y
    np.testing.assert_allclose(KernelRidge(features, alpha=0.5, fit_intercept=fit_intercept)
                               .fit(X, yd).coef_, a.coef_, rtol=0, atol=1e-8)


def test_transform_is_lazy_and_equal(client, seed):
    X, _ = _data(seed)
    est = GegenbauerFeatures(n_components=32, gamma=0.05, random_state=1)
    Zd = est.fit(da.from_array(X, chunks=(300, 4))).transform(da.from_array(X, chunks=(300, 4)))
    assert isinstance(Zd, da.Array) and Zd.chunks == ((300,) * 5, (est._n_features_out,))
    np.testing.assert_array_equal(Zd.compute(), est.transform(X))
    # float32 input keeps float32 features, as in memory
    Z32 = est.transform(da.from_array(X.astype(np.float32), chunks=300))
    assert Z32.dtype == np.float32 and Z32.compute().dtype == np.float32


def test_sparse_features_transform_chunk_by_chunk(client, seed):
    # WeightedRandomBinning is fitted in memory (its cells come from the data); its
    # transform maps Dask chunks to CSR chunks.
    X, _ = _data(seed)
    est = WeightedRandomBinning(n_components=16, random_state=0).fit(X)
    Zd = est.transform(da.from_array(X, chunks=500))
    assert Zd.shape == (1500, est.n_features_out_)
    assert abs(Zd.compute() - est.transform(X)).max() == 0


@pytest.mark.parametrize("features", [
    RLSNystroem(n_components=20), PolynomialLeverageSampler(n_components=20),
    WeightedRandomBinning(n_components=8), NTKRandomFeatures(n_components=16,
                                                             leverage_sampling=True),
], ids=lambda f: type(f).__name__)
def test_maps_that_read_the_data_refuse_dask_fit(seed, features):
    X, y = _data(seed, n=100)
    with pytest.raises(TypeError, match="Dask array"):
        KernelRidge(features).fit(da.from_array(X, chunks=50), y)
    with pytest.raises(TypeError, match="Dask array"):
        features.fit(da.from_array(X, chunks=50))


def test_bad_dask_input(seed):
    X, y = _data(seed, n=100)
    Xd = da.from_array(X, chunks=50)
    with pytest.raises(ValueError, match="y must have shape"):
        KernelRidge(FEATURES[0]).fit(Xd, da.from_array(y[:90], chunks=50))
    unknown = Xd[da.from_array(y > 0, chunks=50)]  # rows of unknown count per chunk
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        KernelRidge(FEATURES[0]).fit(unknown, y[: 0])
    with pytest.raises(TypeError, match="fit_intercept must be a bool"):
        KernelRidge(FEATURES[0], fit_intercept="yes").fit(Xd, da.from_array(y, chunks=50))
    with pytest.raises(ValueError, match="verbose"):
        KernelRidge(FEATURES[0], verbose=-1).fit(Xd, da.from_array(y, chunks=50))
    est = GegenbauerFeatures(n_components=8, gamma=0.05, random_state=0).fit(X)
    with pytest.raises(ValueError, match="3 features"):
        est.transform(Xd[:, :3])


def test_fit_in_bounded_memory():
    # 300k rows chunk-wise under an address-space cap of 120 MB above the process's size:
    # the in-memory X and Z need 165 MB (and fail under the same cap), the Dask fit
    # completes (peak: a few 5000-row chunks plus the 64 x 64 normal matrix).
    out = subprocess.run([sys.executable, str(SCRIPT), "--rows", "300000", "--budget-mb", "120",
                          "--baseline-rows", "20000", "--threads", "1"],
                         capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout[out.stdout.index("{"):])
    assert result["in_memory_need_mb"] > result["budget_mb"]
    assert result["in_memory_failed_under_cap"]
    assert result["heldout_rmse"] < 0.8


def _every_map():
    from kernelsketch.features import ActivationKernelSketch, CNTKSketch, NTKSketch

    return [
        PolynomialSketch(degree=2, n_components=24, coef0=1.0, kind="tensorsketch",
                         random_state=0),
        PolynomialLeverageSampler(n_components=16, random_state=0),
        WeightedRandomBinning(n_components=8, kernel="laplacian", random_state=0),
        RLSNystroem(n_components=16, random_state=0),
        GegenbauerFeatures(n_components=16, gamma=0.05, random_state=0),
        NTKRandomFeatures(n_components=16, random_state=0),
        NTKRandomFeatures(n_components=16, leverage_sampling=True, random_state=0),
        NTKSketch(n_components=16, random_state=0),
        ActivationKernelSketch(activation="erf", n_components=16, random_state=0),
        CNTKSketch(n_components=16, image_shape=(1, 2, 2), filter_size=1, random_state=0),
    ]


@pytest.mark.parametrize("index", range(len(_every_map())),
                         ids=[type(f).__name__ + ("-leverage" if getattr(f, "leverage_sampling",
                                                                         False) else "")
                              for f in _every_map()])
def test_every_map_transforms_dask_arrays(client, seed, index):
    # Every feature map fitted in memory maps a Dask array chunk by chunk on the cluster
    # (lazily) to its in-memory features; a map whose draw does not read the rows fits on
    # the Dask array to the same map. The chunks' features are the rows' (BLAS may round
    # a chunk differently from the whole: 1e-12).
    X, _ = _data(seed, n=300)
    Xd = da.from_array(X, chunks=(70, 4))
    est = _every_map()[index].fit(X)
    Zd = est.transform(Xd)
    assert isinstance(Zd, da.Array) and Zd.chunks[0] == Xd.chunks[0]
    dense = Zd.compute()
    dense = dense.toarray() if hasattr(dense, "toarray") else dense
    ref = est.transform(X)
    ref = ref.toarray() if hasattr(ref, "toarray") else ref
    np.testing.assert_allclose(dense, ref, rtol=0, atol=1e-12)
    if not est._fit_reads_data:
        again = _every_map()[index].fit(Xd)
        np.testing.assert_allclose(again.transform(X), ref, rtol=0, atol=1e-12)
