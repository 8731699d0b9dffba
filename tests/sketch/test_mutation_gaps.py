"""Behaviour of the sketches that mutants surviving tools/mutation.py showed untested.

Each test names the mutant it kills (checked by running it against the mutant).
"""

import numpy as np
import pytest
import torch

from kernelsketch import _checks
from kernelsketch.sketch import (
    SRHT,
    AngularLSH,
    CountSketch,
    Degree2Sketch,
    GaussianSketch,
    PolySketch,
    uniform_sample,
)
from kernelsketch.sketch.hashing import hash_streams, mix64, to_unit, to_unit_pair
from kernelsketch.sketch.leverage import leverage_scores, leverage_scores_from_kernel
from kernelsketch.sketch.lsh import gray_code, inverse_gray_code

# -- sketch/lsh.py ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_gray_codes_of_an_empty_tensor(dtype):
    """An empty batch of codes is valid (``nonempty=None`` in _check_codes refused it)."""
    empty = torch.zeros(0, 3, dtype=dtype)
    for f in (gray_code, inverse_gray_code):
        out = f(empty)
        assert out.shape == (0, 3) and out.dtype == dtype


@pytest.mark.parametrize("n_bits", [1, 5, 30])
def test_angular_lsh_n_buckets_is_two_to_the_bits(n_bits, seed):
    lsh = AngularLSH(3, n_bits, seed=seed)
    assert lsh.n_buckets == 2**n_bits  # 1 >> n, 2 << n and None survived
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(seed))
    assert int(lsh(x).max()) < lsh.n_buckets


def test_angular_lsh_draws_its_planes_from_the_given_generator(seed):
    """``generator=`` is used (resolve_generator(seed) without it drew from torch's global
    generator) and advanced: the planes are the generator's next dim x n_bits normals."""
    g = torch.Generator().manual_seed(seed)
    lsh = AngularLSH(6, 4, generator=g)
    expected = torch.randn(6, 4, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(lsh.planes, expected)
    second = AngularLSH(6, 4, generator=g)
    assert not torch.equal(second.planes, lsh.planes)


def test_angular_lsh_forward_refuses_rows_beyond_memory(monkeypatch, seed):
    """The forward's guard counts 3 n_bits float64 words per row (projections, bits,
    weighted bits): ``3 / n_bits`` let a [rows, dim] input through."""
    lsh = AngularLSH(4, 16, seed=seed)
    rows = 2**14
    need = 8.0 * rows * 3 * 16
    x = torch.zeros(rows, 4)
    monkeypatch.setattr(_checks, "available_memory", lambda: int(need) - 1)
    with pytest.raises(ValueError, match="AngularLSH's output and intermediates"):
        lsh(x)
    monkeypatch.setattr(_checks, "available_memory", lambda: int(need))
    assert lsh(x).shape == (rows,)


# -- sketch/tensor.py ------------------------------------------------------------------------


def _buffer_bytes(module: torch.nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in module.buffers())


@pytest.mark.parametrize("kind", ["gaussian", "srht", "tensorsketch", "countsketch"])
@pytest.mark.parametrize("degree", [2, 5])
def test_polysketch_memory_guard_covers_its_buffers(kind, degree, seed):
    """The construction guard's estimate (the leaves' and the tree's buffers) is at least the
    bytes the module holds: ``(n_leaves - 1) / Degree2Sketch.buffer_bytes`` did not."""
    p = PolySketch(7, 16, degree, kind=kind, seed=seed)
    n_leaves = len(p.leaves)
    estimate = (n_leaves * type(p.leaves[0]).buffer_bytes(7, 16)
                + (n_leaves - 1) * Degree2Sketch.buffer_bytes(16, 16, kind))
    assert _buffer_bytes(p) <= estimate <= 3 * _buffer_bytes(p)
    need = estimate
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_checks, "available_memory", lambda: need - 1)
        with pytest.raises(ValueError, match="PolySketch"):
            PolySketch(7, 16, degree, kind=kind, seed=seed)
        mp.setattr(_checks, "available_memory", lambda: need)
        PolySketch(7, 16, degree, kind=kind, seed=seed)


def test_degree2_countsketch_forward_guard_counts_the_outer_product(monkeypatch, seed):
    """kind='countsketch' flattens x ⊗ x: d_in**2 words per row besides the output, so the
    forward guard refuses rows whose outer products alone exceed memory (the width
    ``d_in**2 - 2 d_out`` or ``d_in**2 + 2 / d_out`` let them through)."""
    d_in, d_out, rows = 24, 40, 1000
    s = Degree2Sketch(d_in, d_out, kind="countsketch", seed=seed)
    x = torch.zeros(rows, d_in, dtype=torch.float64)
    outer_and_output = 8 * rows * (d_in * d_in + d_out)
    monkeypatch.setattr(_checks, "available_memory", lambda: outer_and_output)
    with pytest.raises(ValueError, match="Degree2Sketch's output and intermediates"):
        s(x)
    monkeypatch.setattr(_checks, "available_memory", lambda: 8 * rows * (d_in * d_in + 2 * d_out))
    assert s(x).shape == (rows, d_out)


# -- sketch/hashing.py -----------------------------------------------------------------------

_MASK = (1 << 64) - 1


def _splitmix64_finalizer(z: int) -> int:
    """SplitMix64's output function in Python integers (Steele, Lea & Flood, OOPSLA 2014;
    the constants of Vigna's reference splitmix64.c)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def test_mix64_is_the_splitmix64_finalizer(seed):
    """mix64 is documented as SplitMix64's finalizer; its shifts and multipliers are checked
    against an independent big-integer implementation (a shift of 32 for 31, or ``z = M2``
    for ``z *= M2``, kept every hash test passing: any scramble looks random)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**64, size=200, dtype=np.uint64, endpoint=False)
    x[:3] = [0, 1, 2**64 - 1]
    assert [int(v) for v in mix64(x)] == [_splitmix64_finalizer(int(v)) for v in x]


def test_unit_maps_are_symmetric_inside_the_open_interval(seed):
    """to_unit / to_unit_pair map the smallest and largest words to u and 1 - u with u the
    half-step of their resolution (2**-53, 2**-33), strictly inside (0, 1), monotonically in
    the bits they read (``hi - 0.5`` and ``2**-33`` survived the hashing tests)."""
    lo_hi = np.array([0, 2**64 - 1], dtype=np.uint64)
    u = to_unit(lo_hi)
    assert u[0] == 2.0**-53 and u[1] == 1.0 - 2.0**-53
    for part in to_unit_pair(lo_hi):
        assert part[0] == 2.0**-33 and part[1] == 1.0 - 2.0**-33
    rng = np.random.default_rng(seed)
    h = np.sort(rng.integers(0, 2**64, size=1000, dtype=np.uint64, endpoint=False))
    hi, lo = to_unit_pair(h)
    assert np.all(np.diff(to_unit(h)) >= 0) and np.all(np.diff(hi) >= 0)
    # hi reads the top 32 bits, lo the bottom 32: both within a half-step of the word's share.
    top = np.array([int(v) >> 32 for v in h], dtype=np.float64)
    bottom = np.array([int(v) & 0xFFFFFFFF for v in h], dtype=np.float64)
    np.testing.assert_array_equal(hi, (top + 0.5) / 2.0**32)
    np.testing.assert_array_equal(lo, (bottom + 0.5) / 2.0**32)


# -- sketch/projections.py -------------------------------------------------------------------


@pytest.mark.parametrize("cls", [GaussianSketch, SRHT, CountSketch])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_sketched_in_float32(cls, dtype, seed):
    """float16 / bfloat16 rows are computed in float32 and rounded once: the output is the
    float32 sketch of the same (half-precision) values, rounded (compute_dtype's half case
    dropped, the sums ran in half precision and passed the dtype tests)."""
    s = cls(512, 64, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(40, 512, generator=g)).to(dtype)
    out = s(x)
    assert out.dtype == dtype
    assert torch.equal(out, s(x.float()).to(dtype))


def test_hash_streams_takes_hashes_as_python_ints(seed):
    """``hashes`` is array_like: Python ints give the uint64 array's words (without the
    uint64 conversion, an int64 array met the uint64 salt in bitwise_xor: TypeError)."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**63, size=20, dtype=np.uint64)
    streams = np.arange(3)[:, None]
    np.testing.assert_array_equal(hash_streams([int(v) for v in h], streams),
                                  hash_streams(h, streams))


# -- sketch/leverage.py ----------------------------------------------------------------------


def _reference_leverage(a: np.ndarray, rcond: float) -> np.ndarray:
    """float64 SVD: squared row norms of the left singular vectors above rcond * sigma_max."""
    u, sv, _ = np.linalg.svd(a, full_matrices=False)
    return (u[:, sv > rcond * sv[0]] ** 2).sum(-1)


def _batch_of_spectra(seed):
    """Matrices [4, 12, 5] whose singular values relative to their own largest straddle 0.3
    differently, and whose largest singular values differ by orders of magnitude."""
    g = torch.Generator().manual_seed(seed)
    mats = []
    for b, top in enumerate((1.0, 1e3, 1e-3, 10.0)):
        u, _ = torch.linalg.qr(torch.randn(12, 5, generator=g, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
        rel = torch.tensor([1.0, 0.9 - 0.15 * b, 0.35, 0.25, 0.01], dtype=torch.float64)
        mats.append(top * (u * rel) @ v.T)
    return torch.stack(mats)


def test_rank_tolerance_is_relative_to_each_matrix_of_a_batch(seed):
    """rcond compares each matrix's singular values with its own largest (``amax(None)`` or
    ``amax()`` over the whole batch dropped the small matrices' directions)."""
    a = _batch_of_spectra(seed)
    got = leverage_scores(a, rcond=0.3)
    for b in range(a.shape[0]):
        ref = _reference_leverage(a[b].numpy(), 0.3)
        np.testing.assert_allclose(got[b].numpy(), ref, atol=1e-10)
        assert float(got[b].sum()) == pytest.approx(3.0, abs=1e-10)  # rank at rcond 0.3
    kernel = a @ a.transpose(-1, -2)  # eigenvalues sigma^2: relative tolerance 0.3**2
    got_k = leverage_scores_from_kernel(kernel, rcond=0.09)
    for b in range(a.shape[0]):
        np.testing.assert_allclose(got_k[b].numpy(), _reference_leverage(a[b].numpy(), 0.3),
                                   atol=1e-8)


def test_leverage_from_kernel_names_a_bad_ridge(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        leverage_scores_from_kernel(x @ x.T, ridge=-1.0)


@pytest.mark.parametrize("d_in,d_out", [(1, 1), (5, 3), (64, 16), (100, 300), (1000, 7)])
def test_srht_construction_estimate_counts_its_int64_draws(d_in, d_out, seed):
    """SRHT's construction guard counts its int64 draws: one per sign ([blocks, d_in]) and
    the permutation of blocks x padded_dim, padded_dim the smallest power of two >= d_in
    (``2 << bit_length`` doubled the padding in the estimate only)."""
    s = SRHT(d_in, d_out, seed=seed)
    assert s.padded_dim >= d_in and (s.padded_dim == 1 or s.padded_dim // 2 < d_in)
    blocks = s.signs.shape[0]
    assert blocks * s.padded_dim >= d_out > (blocks - 1) * s.padded_dim
    assert SRHT.buffer_bytes(d_in, d_out) == 8.0 * (s.signs.numel() + blocks * s.padded_dim)


# -- sketch/sampling.py ----------------------------------------------------------------------


def test_uniform_sample_weights_take_the_dtype_and_num_samples_is_positive(seed):
    """``dtype=`` sets the weights' dtype (dropped, float64 weights came back float32), and
    ``num_samples=0`` is refused naming it (without ``min=1`` an empty sample came back)."""
    g = torch.Generator().manual_seed(seed)
    idx, w = uniform_sample(10, 3, batch_shape=(2,), generator=g, dtype=torch.float64)
    assert w.dtype == torch.float64 and idx.shape == (2, 3)
    assert torch.all(w == 10 / 3)
    with pytest.raises(ValueError, match="num_samples"):
        uniform_sample(10, 0, generator=g)
