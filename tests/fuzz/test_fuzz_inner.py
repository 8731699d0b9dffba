"""Fuzz the inner-product sketches, joins and key hashing (issue 21).

Contract (tests/fuzz/contract.py, numpy_inputs.py): a ValueError / TypeError naming an argument,
or a finite result of the documented type; no input modified; bounded time.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernelsketch.inner import (
    METHODS,
    ColumnSketch,
    Sketch,
    Sketcher,
    exact_join_statistics,
    join_correlation,
    join_size,
    sketch_column,
)
from kernelsketch.sketch.hashing import hash_keys
from tests.fuzz.numpy_inputs import check, finite

pytestmark = pytest.mark.timeout(120)

DTYPES = st.sampled_from(
    [np.float64, np.float32, np.float16, np.int64, np.uint8, np.bool_, np.complex128, "<U3", object]
)
ARRAYS = hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=30))
REAL_VECTORS = hnp.arrays(
    np.float64, st.integers(1, 40),
    elements=st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300),
)
METHOD = st.one_of(st.sampled_from(METHODS), st.text(max_size=3))
SIZE = st.one_of(st.integers(-3, 400), st.integers(2**27 - 1, 2**28), st.floats(), st.none())
SEED = st.one_of(st.integers(-3, 2**65), st.floats(0, 10), st.none())
KEYS = st.one_of(
    st.lists(st.integers(-(2**65), 2**65), max_size=30),
    st.lists(st.text(max_size=4), max_size=30),
    st.lists(st.floats(), max_size=5),
    st.lists(st.booleans(), max_size=5),
    ARRAYS,
)


@settings(max_examples=60)
@given(method=METHOD, size=SIZE, seed=SEED, rows=st.integers(-1, 4))
def test_sketcher_construction(method, size, seed, rows):
    sk = check(Sketcher, method, size, seed, rows=rows, names=("method", "size", "seed", "rows"))
    if sk is not None:
        assert sk.method in METHODS and 1 <= sk.size <= 2**27


@settings(max_examples=80)
@given(method=st.sampled_from(METHODS), size=st.integers(5, 200), x=ARRAYS)
def test_sketch_of_any_array(method, size, x):
    sk = Sketcher(method, size, 3)
    s = check(sk.sketch, x, names=("x",))
    if s is None:
        return
    # threshold sampling keeps each entry independently: its size is m = (size - 1) // 2
    # entries in expectation only (4 equal entries at m = 2: 0-4 of them); the others are
    # within size always
    bound = 2 * np.count_nonzero(x) + 1 if method == "ts" else size
    assert isinstance(s, Sketch) and s.storage_size <= bound
    probe = np.linspace(-1.0, 1.0, len(x))
    est = s.inner_product(sk.sketch(probe / max(np.linalg.norm(probe), 1.0)))
    assert isinstance(est, float) and math.isfinite(est)


@settings(max_examples=60)
@given(method=st.sampled_from(METHODS), x=REAL_VECTORS, y=REAL_VECTORS,
       scale=st.sampled_from([1e-300, 1e-150, 1.0, 1e150, 1e300]))
def test_estimate_is_finite_and_scales_with_the_vector(method, x, y, scale):
    # a finite real vector at any magnitude gives a finite estimate, and scaling a
    # vector by a power of ten scales the estimate (the hashing is the same)
    n = min(len(x), len(y))
    x, y = x[:n], y[:n] / max(float(np.max(np.abs(y[:n]))), 1e-300)  # |y| <= 1
    sk = Sketcher(method, 41, 7)
    sy = sk.sketch(y)
    est = check(lambda v: sk.sketch(v).inner_product(sy), x, names=("x",))
    assert est is not None and math.isfinite(est)  # |x| <= 1e300, n <= 40: a float64 norm
    top = float(np.max(np.abs(x)))
    if 0 < top * scale < 1e290 and top * scale > 1e-290 and top > 0:
        scaled = sk.sketch(x * scale).inner_product(sy)
        assert math.isfinite(scaled)
        if est != 0:
            assert scaled / scale == pytest.approx(est, rel=1e-6, abs=1e-300 / scale)


@settings(max_examples=60)
@given(keys=KEYS, values=ARRAYS, method=st.sampled_from(METHODS))
def test_sparse_input(keys, values, method):
    sk = Sketcher(method, 31, 1)
    s = check(sk.sketch, (keys, values), names=("keys", "values", "indices"))
    if s is not None:
        assert isinstance(s, Sketch)


@settings(max_examples=60)
@given(keys=KEYS, seed=SEED)
def test_hash_keys(keys, seed):
    h = check(hash_keys, keys, seed, names=("keys", "seed"))
    if h is not None:
        assert h.dtype == np.uint64 and h.shape == (len(keys),)


def _valid_bytes(method):
    x = np.linspace(-2.0, 3.0, 25)
    return Sketcher(method, 21, 4, rows=2 if method == "cs" else 1).sketch(x).to_bytes()


@settings(max_examples=80)
@given(method=st.sampled_from(METHODS), data=st.data())
def test_from_bytes_of_corrupted_data(method, data):
    raw = bytearray(_valid_bytes(method))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, len(raw)))
        if op == "flip" and i < len(raw):
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[i : i + data.draw(st.integers(1, 8))]
        else:
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    s = check(Sketch.from_bytes, bytes(raw), names=("data",))
    if s is not None:
        assert isinstance(s, Sketch)
        try:  # a decoded sketch estimates against itself or refuses clearly
            s.inner_product(s)
        except (ValueError, TypeError):
            pass


@settings(max_examples=40)
@given(raw=st.binary(max_size=80))
def test_column_from_bytes_of_random_data(raw):
    s = check(ColumnSketch.from_bytes, raw, names=("data", "duplicates"))
    assert s is None or isinstance(s, ColumnSketch)


JOIN_VALUES = hnp.arrays(
    np.float64, st.integers(0, 25),
    elements=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, 1.0, -1.0, 1e-200, 1e200]),
    ),
)


@settings(max_examples=60)
@given(
    values_a=JOIN_VALUES, values_b=JOIN_VALUES, method=METHOD,
    size=st.one_of(st.integers(10, 700), st.floats()),
    duplicates=st.sampled_from(["mean", "join", "sum", "max"]),
    nan=st.sampled_from(["raise", "drop", "zero"]), rows=st.integers(0, 3), data=st.data(),
)
def test_join_correlation(values_a, values_b, method, size, duplicates, nan, rows, data):
    keys_a = data.draw(hnp.arrays(np.int64, len(values_a), elements=st.integers(0, 12)))
    keys_b = data.draw(hnp.arrays(np.int64, len(values_b), elements=st.integers(0, 12)))
    kw = {"size": size, "method": method, "duplicates": duplicates, "nan": nan, "rows": rows}
    r = check(join_correlation, keys_a, values_a, keys_b, values_b, **kw,
             names=("keys", "values", "size", "method", "duplicates", "nan", "rows"))
    if r is None:
        return
    assert isinstance(r, float) and (math.isnan(r) or -1.0 <= r <= 1.0)


@settings(max_examples=60)
@given(
    values_a=hnp.arrays(np.float64, st.integers(2, 25), elements=st.floats(-1e300, 1e300)),
    values_b=hnp.arrays(np.float64, st.integers(2, 25), elements=st.floats(-1e300, 1e300)),
    method=st.sampled_from(["ts", "ps"]), data=st.data(),
)
def test_full_budget_join_correlation_is_exact_at_any_magnitude(values_a, values_b, method, data):
    # with every key in the sample, the estimate is the exact correlation of the join,
    # whatever the magnitudes (each column is rescaled by a power of two)
    keys_a = data.draw(hnp.arrays(np.int64, len(values_a), elements=st.integers(0, 12)))
    keys_b = data.draw(hnp.arrays(np.int64, len(values_b), elements=st.integers(0, 12)))
    r = join_correlation(keys_a, values_a, keys_b, values_b, size=600, method=method)
    scale = [2.0 ** -int(np.frexp(np.max(np.abs(v)) or 1.0)[1]) for v in (values_a, values_b)]
    exact = exact_join_statistics(keys_a, values_a * scale[0], keys_b, values_b * scale[1])
    if math.isnan(exact.correlation):
        return
    assert r == pytest.approx(exact.correlation, abs=1e-6)


@settings(max_examples=40)
@given(keys_a=KEYS, keys_b=KEYS, method=METHOD,
       size=st.one_of(st.integers(-3, 400), st.floats(), st.none()))
def test_join_size(keys_a, keys_b, method, size):
    est = check(join_size, keys_a, keys_b, size=size, method=method,
                names=("keys", "size", "method"))
    if est is not None:
        assert finite(est)


@settings(max_examples=40)
@given(keys=KEYS, values=ARRAYS, size=st.integers(10, 100), method=st.sampled_from(METHODS))
def test_sketch_column_of_any_input(keys, values, size, method):
    col = check(sketch_column, keys, values, size=size, method=method,
               names=("keys", "values", "size"))
    assert col is None or col.storage_size <= (2 * len(keys) + 1 if method == "ts" else size)
