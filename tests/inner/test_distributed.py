"""Parallel sketching of a partitioned table on a local Dask cluster of 2 processes."""

import numpy as np
import pandas as pd
import pytest

dd = pytest.importorskip("dask.dataframe", reason="the optional 'dask' extra is not installed")
distributed = pytest.importorskip(
    "distributed", reason="the optional 'dask' extra is not installed"
)

from kernelsketch.inner import join_statistics, sketch_column
from kernelsketch.inner.distributed import sketch_table
from tests.seeding import derive_seed, seed_offset


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def table():
    # module-scoped, so seeded like the ``seed`` fixture but from the module's name
    rng = np.random.default_rng(derive_seed(__name__ + "::table", seed_offset()))
    n = 3000
    keys = rng.integers(0, 800, size=n)
    latent = rng.normal(size=800)
    df = pd.DataFrame(
        {
            "k": [f"key{k}" for k in keys],  # string keys, repeated across partitions
            "x": latent[keys] + rng.normal(size=n),
            "y": -latent[keys] + rng.normal(size=n),
        }
    )
    return df, dd.from_pandas(df, npartitions=3)


def _single(df, col, method):
    return sketch_column(df.k, df[col], size=301, method=method, seed=11)


def test_distributed_sketches_match_single_machine(client, table):
    # one test (one cluster) for all methods: worker start-up dominates the cost
    df, ddf = table
    # black-box (three WMH sketches per column) and joint priority sample; equal up to
    # rounding of the norms, which are summed over partitions in another order
    for method in ("wmh", "ps"):
        sketches = sketch_table(ddf, "k", ["x", "y"], size=301, method=method, seed=11)
        assert set(sketches) == {"x", "y"}
        dist = join_statistics(sketches["x"], sketches["y"])
        local = join_statistics(_single(df, "x", method), _single(df, "y", method))
        for field in ("size", "sum_a", "sum_b", "sum_sq_a", "sum_sq_b", "sum_ab"):
            assert getattr(dist, field) == pytest.approx(getattr(local, field), rel=1e-9, abs=1e-6)


def test_sketch_table_rejects_missing_column(table):
    _, ddf = table
    with pytest.raises(ValueError, match="frame has no column 'z'"):
        sketch_table(ddf, "k", ["z"], size=30)


def test_sketch_table_rejects_pandas_frame(table):
    df, _ = table
    with pytest.raises(TypeError, match="frame must be a dask.dataframe.DataFrame, got DataFrame"):
        sketch_table(df, "k", ["x"], size=30)
