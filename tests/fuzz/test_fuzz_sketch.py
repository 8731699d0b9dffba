"""Fuzz the shared randomized primitives of kernelsketch.sketch (issue 21).

Contract (tests/fuzz/contract.py, numpy_inputs.py): a ValueError / TypeError
naming an argument, or a finite output of the documented shape and dtype; no
input modified; bounded time.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernelsketch.sketch import (
    SRHT,
    AngularLSH,
    CountSketch,
    Degree2Sketch,
    GaussianSketch,
    PolySketch,
    RademacherSketch,
    TensorSketch,
    TensorSRHT,
    fwht,
    gray_code,
    importance_sample,
    inverse_gray_code,
    leverage_scores,
    leverage_scores_from_gram,
    leverage_scores_from_kernel,
    ridge_leverage_scores,
    sketched_leverage_scores,
    uniform_sample,
)
from tests.fuzz.numpy_inputs import check

pytestmark = pytest.mark.timeout(120)

TORCH_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
                torch.bool, torch.complex64]
INT = st.one_of(st.integers(-2, 40), st.sampled_from([2**31, 2**62]), st.floats(0, 8), st.none())
DIM = st.integers(-1, 12)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, 1e-30, -1e30, 3e38]),
)


@st.composite
def tensors(draw, last=None, min_dims=0, max_dims=3):
    shape = list(draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0,
                                       max_side=6)))
    if last is not None and shape and draw(st.booleans()):
        shape[-1] = last
    dtype = draw(st.sampled_from(TORCH_DTYPES))
    arr = draw(hnp.arrays("float64", tuple(shape), elements=FLOATS))
    return torch.from_numpy(arr).to(dtype)


def _forward_ok(out, x, d_out):
    assert out.shape == (*x.shape[:-1], d_out)
    assert out.dtype == x.dtype
    if torch.isfinite(x).all() and x.abs().max() <= 1e4:
        assert torch.isfinite(out).all()


LINEAR = [GaussianSketch, RademacherSketch, SRHT, CountSketch]


@settings(max_examples=60)
@given(cls=st.sampled_from(LINEAR), d_in=DIM, d_out=DIM, seed=INT, data=st.data())
def test_linear_sketches(cls, d_in, d_out, seed, data):
    s = check(cls, d_in, d_out, seed=seed, names=("d_in", "d_out", "seed"))
    if s is None:
        return
    x = data.draw(tensors(last=d_in))
    out = check(s, x, names=("x",))
    if out is not None:
        _forward_ok(out, x, d_out)


@settings(max_examples=50)
@given(cls=st.sampled_from([TensorSketch, TensorSRHT]), d_in=DIM, d_out=DIM,
       degree=st.integers(-1, 5), seed=INT, data=st.data())
def test_tensor_sketches(cls, d_in, d_out, degree, seed, data):
    s = check(cls, d_in, d_out, degree, seed=seed, names=("d_in", "d_out", "degree", "seed"))
    if s is None:
        return
    x = data.draw(tensors(last=d_in))
    out = check(s, x, names=("x",))
    if out is not None:
        _forward_ok(out, x, d_out)


@settings(max_examples=50)
@given(d_in=DIM, d_out=DIM, degree=st.integers(-1, 6),
       kind=st.sampled_from(["srht", "gaussian", "countsketch", "tensorsketch", "dense"]),
       seed=INT, data=st.data())
def test_polysketch(d_in, d_out, degree, kind, seed, data):
    s = check(PolySketch, d_in, d_out, degree, kind=kind, seed=seed,
              names=("d_in", "d_out", "degree", "kind", "seed"))
    if s is None:
        return
    x = data.draw(tensors(last=d_in))
    out = check(s, x, names=("x",))
    if out is not None:
        _forward_ok(out, x, d_out)
        powers = s.all_powers(x)
        assert len(powers) == degree + 1


@settings(max_examples=40)
@given(d_in=DIM, d_out=DIM, kind=st.sampled_from(["srht", "gaussian", "countsketch",
                                                    "tensorsketch", "x"]),
       seed=INT, data=st.data())
def test_degree2_sketch(d_in, d_out, kind, seed, data):
    s = check(Degree2Sketch, d_in, d_out, kind=kind, seed=seed,
              names=("d_in", "d_out", "kind", "seed"))
    if s is None:
        return
    x, y = data.draw(tensors(last=d_in)), data.draw(tensors(last=d_in))
    out = check(s, x, y, names=("x", "y"))
    if out is not None:
        assert out.shape[-1] == d_out


@settings(max_examples=40)
@given(dim=DIM, n_bits=st.integers(-1, 33), seed=INT, data=st.data())
def test_angular_lsh(dim, n_bits, seed, data):
    lsh = check(AngularLSH, dim, n_bits, seed=seed, names=("dim", "n_bits", "seed"))
    if lsh is None:
        return
    x = data.draw(tensors(last=dim))
    ids = check(lsh, x, names=("x",))
    if ids is not None:
        assert ids.dtype == torch.int64 and ids.shape == x.shape[:-1]
        assert ((ids >= 0) & (ids < 2**n_bits)).all()


@settings(max_examples=40)
@given(x=tensors())
def test_fwht(x):
    out = check(fwht, x, names=("x",))
    if out is not None:
        assert out.shape == x.shape and out.dtype == x.dtype


@settings(max_examples=40)
@given(r=hnp.arrays("int64", st.integers(0, 20), elements=st.integers(-(2**63), 2**63 - 1)),
       dtype=st.sampled_from([torch.int64, torch.int32, torch.float32]))
def test_gray_codes(r, dtype):
    t = torch.from_numpy(r).to(dtype)
    g = check(gray_code, t, names=("r",))
    if g is not None:
        assert torch.equal(inverse_gray_code(g), t)
    check(inverse_gray_code, t, names=("c",))


@settings(max_examples=60)
@given(A=tensors(min_dims=1, max_dims=3), rcond=st.one_of(st.none(), FLOATS),
       lam=FLOATS, sketch_size=INT, jl=st.one_of(st.none(), INT),
       sketch=st.sampled_from(["srht", "countsketch", "gaussian"]))
def test_leverage_scores(A, rcond, lam, sketch_size, jl, sketch):
    names = ("A", "rcond", "lam", "sketch_size", "jl_size", "sketch", "gram", "kernel")
    for out in (
        check(leverage_scores, A, rcond=rcond, names=names),
        check(ridge_leverage_scores, A, lam, names=names),
        check(sketched_leverage_scores, A, sketch_size=sketch_size, jl_size=jl, sketch=sketch,
              generator=torch.Generator().manual_seed(0), names=names),
    ):
        if out is not None:
            assert out.shape == A.shape[:-1] and torch.isfinite(out).all()
    if A.dim() >= 2 and A.is_floating_point():
        gram = A.mT @ A
        out = check(leverage_scores_from_gram, A, gram, names=names)
        assert out is None or torch.isfinite(out).all()
        K = A @ A.mT
        out = check(leverage_scores_from_kernel, K, names=names)
        assert out is None or torch.isfinite(out).all()


@settings(max_examples=60)
@given(probs=tensors(min_dims=0, max_dims=2), num=INT, replacement=st.booleans(),
       n=INT, batch=st.lists(st.integers(-1, 3), max_size=2))
def test_sampling(probs, num, replacement, n, batch):
    g = torch.Generator().manual_seed(1)
    names = ("probs", "num_samples", "n", "batch_shape")
    out = check(importance_sample, probs, num, generator=g, replacement=replacement, names=names)
    if out is not None:
        idx, w = out
        assert idx.shape == (*probs.shape[:-1], num) and torch.isfinite(w).all()
        assert ((idx >= 0) & (idx < probs.shape[-1])).all()
    out = check(uniform_sample, n, num, batch_shape=batch, generator=g, replacement=replacement,
                names=names)
    if out is not None:
        idx, w = out
        assert idx.shape == (*batch, num) and ((idx >= 0) & (idx < n)).all()
