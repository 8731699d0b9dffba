"""Sketcher / Sketch API: inputs, coordination, merge, serialization and errors."""

import numpy as np
import pandas as pd
import pytest
import torch

from kernelsketch.inner import (
    METHODS,
    CountSketch,
    PrioritySketch,
    Sketch,
    Sketcher,
    ThresholdSketch,
    WeightedMinHashSketch,
)
from kernelsketch.inner.base import FORMAT_VERSION
from tests.seeding import derive_seeds


def _sparse_vector(rng, n=200, nnz=60):
    x = np.zeros(n)
    x[rng.choice(n, nnz, replace=False)] = rng.normal(size=nnz)
    return x


# ------------------------------------------------------------- inputs
@pytest.mark.parametrize("method", METHODS)
def test_dense_and_sparse_inputs_give_the_same_sketch(method, np_rng):
    x = _sparse_vector(np_rng)
    idx = np.flatnonzero(x)
    sk = Sketcher(method, 41, 17)
    assert sk.sketch(x) == sk.sketch((idx, x[idx]))
    assert sk.sketch(x) == sk.sketch((idx.tolist(), x[idx].tolist()))
    assert sk.sketch(x) == sk.sketch(torch.from_numpy(x))
    assert sk.sketch(x) == sk.sketch(pd.Series(x))


@pytest.mark.parametrize("method", METHODS)
def test_duplicate_indices_are_summed(method):
    sk = Sketcher(method, 21, 2)
    merged = sk.sketch((["a", "b", "a"], [1.0, 2.0, 0.5]))
    assert merged == sk.sketch((["a", "b"], [1.5, 2.0]))


@pytest.mark.statistical
@pytest.mark.parametrize("method", METHODS)
def test_string_and_large_integer_keys_coordinate(method, np_rng, seed):
    # Keys in another order give the same sketch, and a pair keyed by strings or large
    # integers is estimated as by positions. vb correlates with va (<va, vb> ~ 0.96
    # ||va|| ||vb||), so an estimate of 0 or uncoordinated hashes fail. Error / (||va|| ||vb||)
    # over 200 seeds at size 2001: sd <= 0.040 (wmh), largest 0.13, normal tails (max |z| 3.5);
    # the bound 0.25 is 6 sd.
    rng = np_rng
    keys = np.array([f"id{i}" for i in range(300)])
    big = rng.integers(2**62, 2**63, size=300, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    va = rng.choice([-1.0, 1.0], size=300) * rng.uniform(1, 2, size=300)
    vb = va * rng.uniform(0.5, 1.5, size=300)
    perm = rng.permutation(300)
    sk = Sketcher(method, 2001, seed)
    scale = np.linalg.norm(va) * np.linalg.norm(vb)
    for k in (keys, big):
        est = sk.sketch((k, va)).inner_product(sk.sketch((k[::-1], vb[::-1])))
        shuffled = sk.sketch((k[perm], va[perm])).inner_product(sk.sketch((k[::-1], vb[::-1])))
        assert shuffled == pytest.approx(est, rel=1e-9, abs=1e-9 * scale)  # up to summation order
        assert abs(est - va @ vb) < 0.25 * scale


def test_sketch_is_deterministic_across_sketchers(np_rng):
    x = _sparse_vector(np_rng)
    for method in METHODS:
        assert Sketcher(method, 31, 5).sketch(x) == Sketcher(method, 31, 5).sketch(x)
        assert Sketcher(method, 31, 5).sketch(x) != Sketcher(method, 31, 6).sketch(x)


def test_zeros_are_ignored():
    sk = Sketcher("ps", 21, 0)
    assert sk.sketch((["a", "b", "c"], [1.0, 0.0, 2.0])) == sk.sketch((["a", "c"], [1.0, 2.0]))


# ------------------------------------------------------------ storage
@pytest.mark.parametrize("method", ["jl", "cs", "mh", "wmh", "ps"])
def test_storage_size_within_budget(method, np_rng):
    x = np_rng.normal(size=500)
    for size in (9, 100, 401):
        assert size - 1 <= Sketcher(method, size, 1).sketch(x).storage_size <= size


@pytest.mark.statistical
def test_threshold_storage_within_budget_in_expectation(np_rng, seed, measure):
    x = np_rng.standard_cauchy(size=2000)  # very skewed weights
    sizes = [Sketcher("ts", 201, s).sketch(x).storage_size for s in derive_seeds(seed, 200)]
    # E[k] = (201 - 1) / 2 = 100 exactly (adaptive threshold), Var[k] <= 100: a z-score
    # against that bound, at 5 standard errors (normal tail 5.7e-7)
    assert abs(measure("z", (np.mean(sizes) - 201) / (2 * np.sqrt(100 / 200)))) < 5.0


def test_priority_keeps_whole_support_when_it_fits(np_rng):
    x = np_rng.normal(size=30)
    s = Sketcher("ps", 61, 1).sketch(x)
    assert isinstance(s, PrioritySketch) and s.keys.size == 30 and s.tau == np.inf


def test_countsketch_rows_shape():
    s = Sketcher("cs", 100, 1, rows=3).sketch(np.ones(10))
    assert isinstance(s, CountSketch) and s.table.shape == (3, 33) and s.storage_size == 99


# -------------------------------------------------------------- merge
@pytest.mark.parametrize("method", ["jl", "cs"])
def test_linear_merge_is_sketch_of_sum(method, np_rng):
    rng = np_rng
    a, b = rng.normal(size=100), rng.normal(size=100)
    sk = Sketcher(method, 50, 3, rows=2 if method == "cs" else 1)
    merged = sk.sketch(a).merge(sk.sketch(b))
    whole = sk.sketch(a + b)
    arr = merged.projection if method == "jl" else merged.table
    ref = whole.projection if method == "jl" else whole.table
    np.testing.assert_allclose(arr, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["jl", "cs"])
def test_streaming_updates_of_linear_sketches(method, np_rng):
    rng = np_rng
    sk = Sketcher(method, 40, 8)
    s = sk.sketch((["a", "b"], [1.0, 2.0]))
    for _ in range(3):
        s = sk.update(s, (["b", "c"], [0.5, -1.0]))
    whole = sk.sketch((["a", "b", "c"], [1.0, 3.5, -3.0]))
    probe = sk.sketch((["a", "b", "c", "d"], rng.normal(size=4)))
    assert s.inner_product(probe) == pytest.approx(whole.inner_product(probe), rel=1e-12, abs=1e-12)


def test_streaming_update_rejects_sampling_sketches():
    sk = Sketcher("ps", 21, 0)
    with pytest.raises(ValueError, match="streaming updates need a linear sketch"):
        sk.update(sk.sketch(np.ones(3)), np.ones(3))


@pytest.mark.parametrize("method", ["mh", "wmh", "ts", "ps"])
def test_sampling_merge_of_disjoint_parts_is_sketch_of_whole(method, np_rng):
    x = np_rng.normal(size=400)
    keys = np.arange(400)
    sk = Sketcher(method, 61, 9)
    norm = float(np.linalg.norm(x))
    parts = [sk.sketch((keys[p], x[p]), norm=norm) for p in np.array_split(np.arange(400), 3)]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert merged == sk.sketch(x, norm=norm)
    if method in ("mh", "ps"):  # these do not depend on the norm at all
        assert merged == sk.sketch(x)


def test_priority_merge_rejects_shared_keys():
    sk = Sketcher("ps", 21, 0)
    with pytest.raises(ValueError, match="disjoint supports"):
        sk.sketch((["a", "b"], [1.0, 2.0])).merge(sk.sketch((["b", "c"], [1.0, 2.0])))


def test_weighted_minhash_merge_requires_common_norm():
    sk = Sketcher("wmh", 21, 0)
    with pytest.raises(ValueError, match="same norm"):
        sk.sketch(([1, 2], [1.0, 2.0])).merge(sk.sketch(([3, 4], [1.0, 5.0])))


def test_threshold_merge_requires_common_norm():
    sk = Sketcher("ts", 5, 0)
    with pytest.raises(ValueError, match="same norm"):
        sk.sketch(([1, 2, 3], [1.0, 2.0, 3.0])).merge(sk.sketch(([4, 5, 6], [1.0, 7.0, 3.0])))


# ------------------------------------------------------ serialization
@pytest.mark.parametrize("method", METHODS)
def test_bytes_round_trip(method, np_rng):
    x = np_rng.normal(size=300)
    for s in (
        Sketcher(method, 41, 2**64 - 1).sketch(x),
        Sketcher(method, 41, 3).sketch(np.zeros(3)),
    ):
        back = Sketch.from_bytes(s.to_bytes())
        assert type(back) is type(s) and back == s
        y = np_rng.normal(size=300)
        other = Sketcher(method, 41, s.seed).sketch(y)
        assert back.inner_product(other) == s.inner_product(other)


def test_from_bytes_rejects_wrong_magic():
    with pytest.raises(ValueError, match="not a kernelsketch inner-product sketch"):
        Sketch.from_bytes(b"XXXX" + bytes(10))


def test_from_bytes_rejects_other_version():
    data = bytearray(Sketcher("jl", 4, 0).sketch(np.ones(3)).to_bytes())
    data[4] = FORMAT_VERSION + 1
    with pytest.raises(ValueError, match=f"format version {FORMAT_VERSION + 1}"):
        Sketch.from_bytes(bytes(data))


def test_from_bytes_rejects_truncated_data():
    data = Sketcher("ps", 21, 0).sketch(np.ones(30)).to_bytes()
    with pytest.raises(ValueError, match="truncated"):
        Sketch.from_bytes(data[:-8])


def test_from_bytes_rejects_non_bytes():
    with pytest.raises(TypeError, match="data must be bytes, got str"):
        Sketch.from_bytes("abc")


# -------------------------------------------------- mixing sketches
def test_mixing_methods_raises():
    x = np.ones(5)
    with pytest.raises(ValueError, match="method differs"):
        Sketcher("ts", 21, 0).sketch(x).inner_product(Sketcher("ps", 21, 0).sketch(x))


def test_mixing_seeds_raises():
    x = np.ones(5)
    with pytest.raises(ValueError, match="seed differs, 0 here vs 1"):
        Sketcher("wmh", 21, 0).sketch(x).inner_product(Sketcher("wmh", 21, 1).sketch(x))


def test_mixing_sizes_raises():
    x = np.ones(5)
    with pytest.raises(ValueError, match="size differs"):
        Sketcher("jl", 20, 0).sketch(x).merge(Sketcher("jl", 21, 0).sketch(x))


def test_mixing_countsketch_rows_raises():
    x = np.ones(5)
    with pytest.raises(ValueError, match="params differs"):
        Sketcher("cs", 20, 0, rows=2).sketch(x).inner_product(Sketcher("cs", 20, 0).sketch(x))


def test_inner_product_with_non_sketch_raises():
    with pytest.raises(TypeError, match="other must be a Sketch, got ndarray"):
        Sketcher("jl", 20, 0).sketch(np.ones(5)).inner_product(np.ones(5))


# ------------------------------------------------------- bad inputs
def test_unknown_method():
    with pytest.raises(ValueError, match=r"method must be one of .*got 'lsh'"):
        Sketcher("lsh", 10)


def test_size_not_int():
    with pytest.raises(TypeError, match="size must be an int, got float"):
        Sketcher("jl", 10.0)


def test_size_too_small_for_method():
    with pytest.raises(ValueError, match="size must be >= 5, got 4"):
        Sketcher("wmh", 4)


def test_negative_seed():
    with pytest.raises(ValueError, match="seed must be in"):
        Sketcher("jl", 10, -1)


def test_rows_for_non_countsketch():
    with pytest.raises(ValueError, match="rows applies to method='cs' only"):
        Sketcher("jl", 10, rows=3)


def test_rows_larger_than_size():
    with pytest.raises(ValueError, match="size must be >= rows=5"):
        Sketcher("cs", 4, rows=5)


def test_vector_with_nan():
    with pytest.raises(ValueError, match="x must be finite"):
        Sketcher("ts", 11).sketch(np.array([1.0, np.nan]))


def test_sparse_values_with_inf():
    with pytest.raises(ValueError, match="values must be finite"):
        Sketcher("ts", 11).sketch(([1, 2], [1.0, np.inf]))


def test_vector_two_dimensional():
    with pytest.raises(ValueError, match=r"x must have 1 dimensions, got shape \[2, 2\]"):
        Sketcher("jl", 11).sketch(np.ones((2, 2)))


def test_vector_empty():
    with pytest.raises(ValueError, match="x must be non-empty"):
        Sketcher("jl", 11).sketch(np.array([]))


def test_vector_of_strings():
    with pytest.raises(TypeError, match="x must hold real numbers, got dtype <U1"):
        Sketcher("jl", 11).sketch(np.array(["a", "b"]))


def test_complex_tensor():
    with pytest.raises(TypeError, match="x must hold real numbers, got dtype torch.complex64"):
        Sketcher("jl", 11).sketch(torch.ones(3, dtype=torch.complex64))


def test_sparse_length_mismatch():
    with pytest.raises(ValueError, match="same length, got 3 indices and 2 values"):
        Sketcher("ps", 11).sketch(([1, 2, 3], [1.0, 2.0]))


def test_sparse_float_indices():
    with pytest.raises(TypeError, match="keys must be integers, strings or datetimes"):
        Sketcher("ps", 11).sketch(([1.5, 2.5], [1.0, 2.0]))


def test_tuple_of_wrong_length():
    with pytest.raises(ValueError, match="tuple \\(indices, values\\), got a 3-tuple"):
        Sketcher("ps", 11).sketch(([1], [1.0], [2.0]))


def test_norm_smaller_than_vector_norm():
    with pytest.raises(ValueError, match=r"norm must be >= the norm of x \(5.0\), got 1.0"):
        Sketcher("wmh", 11).sketch(np.array([3.0, 4.0]), norm=1.0)


def test_norm_negative():
    with pytest.raises(ValueError, match="norm must be >= 0.0, got -1.0"):
        Sketcher("ts", 11).sketch(np.array([3.0, 4.0]), norm=-1.0)


def test_repr_mentions_parameters():
    assert repr(Sketcher("cs", 12, 3, rows=2)) == "Sketcher('cs', size=12, seed=3, rows=2)"
    s = Sketcher("wmh", 11, 1).sketch(np.ones(4))
    assert isinstance(s, WeightedMinHashSketch) and "storage_size=11" in repr(s)
    assert isinstance(Sketcher("ts", 11, 1).sketch(np.ones(4)), ThresholdSketch)


# ------------------------------------------------- extreme magnitudes
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scale", [1e-300, 1e-200, 2.0**-600, 1e200, 2.0**600, 1e300])
def test_estimates_scale_with_the_vector_at_any_magnitude(method, scale, np_rng):
    # entries beyond 1e+-154 once over- or underflowed in squares and norms (wmh gave 0.0 for
    # a * 1e200, ts 0.0 and ps NaN for a * 1e-200); the estimate of <c a, b> is c <a, b>
    a, b = np_rng.normal(size=300), np_rng.normal(size=300)
    sk = Sketcher(method, 201, 5)
    base = sk.sketch(a).inner_product(sk.sketch(b))
    scaled = sk.sketch(scale * a).inner_product(sk.sketch(b))
    assert np.isfinite(scaled) and scaled / scale == pytest.approx(base, rel=1e-9)
    # both vectors scaled down: the product of the scales stays in range
    both = sk.sketch(scale * a).inner_product(sk.sketch(b / scale))
    assert both == pytest.approx(base, rel=1e-9)


def test_norm_beyond_float64_raises():
    with pytest.raises(ValueError, match="x must have an l2 norm within the float64 range"):
        Sketcher("wmh", 21).sketch(np.full(4, 1e308))


# -------------------------------------------------------- format v1
def test_reads_format_version_1():
    # version 1 stored the sampling scales linearly ("scale", "tau"); version 2 their logs
    import json
    import struct

    for method, old, new in (("ts", "scale", "log_scale"), ("ps", "tau", "log_tau")):
        s = Sketcher(method, 21, 3).sketch(np.arange(1.0, 40.0))
        data = s.to_bytes()
        _, _, head_len = struct.unpack_from("<4sHI", data)
        header = json.loads(data[10 : 10 + head_len])
        header["scalars"] = {old: float(np.exp(header["scalars"][new]))}
        head = json.dumps(header).encode()
        v1 = struct.pack("<4sHI", b"KSIP", 1, len(head)) + head + data[10 + head_len :]
        back = Sketch.from_bytes(v1)
        assert back.probabilities() == pytest.approx(s.probabilities(), rel=1e-12)


def _with_header(data, edit):
    import json
    import struct

    _, version, head_len = struct.unpack_from("<4sHI", data)
    header = json.loads(data[10 : 10 + head_len])
    header = edit(header)
    head = json.dumps(header).encode()
    return struct.pack("<4sHI", b"KSIP", version, len(head)) + head + data[10 + head_len :]


@pytest.mark.parametrize(
    "edit",
    [
        lambda h: [h],
        lambda h: {k: v for k, v in h.items() if k != "arrays"},
        lambda h: {**h, "arrays": 5},
        lambda h: {**h, "arrays": [["keys", "zz", 3], ["values", "f8", 3]]},
        lambda h: {**h, "arrays": [["values", "f8", 3]]},
        lambda h: {**h, "scalars": []},
        lambda h: {**h, "scalars": {"tau": 1.0}},
        lambda h: {**h, "scalars": {"log_tau": [1]}},
        lambda h: {**h, "size": "x"},
        lambda h: {**h, "seed": -1},
        lambda h: {**h, "params": {"rows": 2}},
        lambda h: {**h, "method": 7},
    ],
    ids=["list", "no-arrays", "arrays-int", "bad-dtype", "missing-array", "scalars-list",
         "wrong-scalar", "scalar-list", "size-str", "seed-negative", "extra-param", "method-int"],
)
def test_from_bytes_rejects_corrupt_header_with_value_error(edit):
    # a corrupted header raised KeyError / AttributeError / TypeError instead of ValueError
    data = Sketcher("ps", 21, 0).sketch(np.arange(1.0, 30.0)).to_bytes()
    with pytest.raises(ValueError, match="corrupt sketch header|unknown sketch method"):
        Sketch.from_bytes(_with_header(data, edit))


def test_from_bytes_rejects_inconsistent_countsketch_rows():
    data = Sketcher("cs", 20, 0, rows=2).sketch(np.ones(5)).to_bytes()
    bad = _with_header(data, lambda h: {**h, "params": {"rows": 3}})
    with pytest.raises(ValueError, match="do not fill 3 rows"):
        Sketch.from_bytes(bad)


def test_from_bytes_rejects_truncated_header():
    data = Sketcher("jl", 4, 0).sketch(np.ones(3)).to_bytes()
    with pytest.raises(ValueError, match="truncated"):
        Sketch.from_bytes(data[:14])


# ------------------------------------------------------ size limits
def test_zero_dimensional_vector_rejected():
    with pytest.raises(ValueError, match=r"x must have 1 dimensions, got shape \[\]"):
        Sketcher("jl", 5).sketch(np.float64(3.0))


def test_size_beyond_memory_bound_rejected_before_allocating():
    # Sketcher('jl', 10**10) ended in MemoryError
    with pytest.raises(ValueError, match=f"size must be <= {2**27}, got 10000000000"):
        Sketcher("jl", 10**10)


def test_integer_keys_beyond_64_bits_rejected():
    with pytest.raises(ValueError, match=r"keys must be integers in \[-2\*\*63, 2\*\*64\)"):
        Sketcher("jl", 5).sketch(([2**64], [1.0]))
