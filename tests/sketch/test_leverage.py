"""Leverage scores: exact (rank-aware), ridge, from a Gram matrix, sketched."""

import pytest
import torch

from kernelsketch.sketch.leverage import (
    leverage_scores,
    leverage_scores_from_gram,
    leverage_scores_from_kernel,
    ridge_leverage_scores,
    sketched_leverage_scores,
)
from tests.seeding import derive_seed, derive_seeds


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _low_rank(batch, n, d, rank, dtype=torch.float64, generator=None):
    a = torch.randn(batch, n, rank, dtype=dtype, generator=generator)
    b = torch.randn(batch, rank, d, dtype=dtype, generator=generator)
    # Uneven row norms so the scores are far from uniform.
    scale = torch.rand(batch, n, 1, dtype=dtype, generator=generator) ** 3
    return (a @ b) * scale


def _hat_diagonal(a):
    """Oracle diag(A A^+) in float64 via numpy-style pinv."""
    return torch.diagonal(a @ torch.linalg.pinv(a), dim1=-2, dim2=-1)


@pytest.mark.parametrize("shape", [(30, 6), (6, 30), (2, 3, 40, 8)])
def test_full_rank_scores_match_hat_matrix(shape, torch_generator):
    a = torch.randn(*shape, dtype=torch.float64, generator=torch_generator)
    tau = leverage_scores(a)
    assert tau.shape == shape[:-1]
    torch.testing.assert_close(tau, _hat_diagonal(a), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(tau.sum(-1), torch.full(shape[:-2], float(min(shape[-2:])),
                                                      dtype=torch.float64), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rank", [1, 4, 7])
def test_scores_sum_to_rank_for_rank_deficient_matrices(dtype, rank):
    a = _low_rank(3, 60, 10, rank, dtype=dtype)
    tau = leverage_scores(a)
    assert tau.dtype == dtype
    assert ((tau >= -1e-6) & (tau <= 1 + 1e-6)).all()
    torch.testing.assert_close(tau.sum(-1), torch.full((3,), float(rank), dtype=dtype),
                               rtol=1e-4, atol=1e-4)


def test_zero_rows_and_zero_matrix(torch_generator):
    a = torch.randn(20, 4, dtype=torch.float64, generator=torch_generator)
    a[5] = 0
    tau = leverage_scores(a)
    assert tau[5] == 0
    assert torch.equal(leverage_scores(torch.zeros(2, 5, 3)), torch.zeros(2, 5))


def test_rcond_controls_numerical_rank(torch_generator):
    u, _ = torch.linalg.qr(torch.randn(40, 5, dtype=torch.float64, generator=torch_generator))
    v, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=torch_generator))
    a = u @ torch.diag(torch.tensor([1.0, 1.0, 1.0, 1e-3, 1e-9], dtype=torch.float64)) @ v.T
    assert abs(leverage_scores(a).sum().item() - 5) < 1e-6
    assert abs(leverage_scores(a, rcond=1e-6).sum().item() - 4) < 1e-6
    assert abs(leverage_scores(a, rcond=1e-2).sum().item() - 3) < 1e-6


@pytest.mark.parametrize("lam", [1e-3, 1.0, 50.0])
def test_ridge_scores_match_formula(lam):
    a = _low_rank(2, 25, 6, 4)
    eye = torch.eye(6, dtype=torch.float64)
    expected = torch.diagonal(a @ torch.linalg.solve(a.mT @ a + lam * eye, a.mT), dim1=-2, dim2=-1)
    torch.testing.assert_close(ridge_leverage_scores(a, lam), expected, rtol=1e-9, atol=1e-12)


def test_ridge_scores_increase_to_leverage_as_ridge_vanishes(torch_generator):
    a = torch.randn(30, 5, dtype=torch.float64, generator=torch_generator)
    exact = leverage_scores(a)
    previous = torch.zeros(30, dtype=torch.float64)
    for lam in (100.0, 1.0, 1e-2, 1e-6):
        current = ridge_leverage_scores(a, lam)
        assert (current >= previous - 1e-12).all() and (current <= exact + 1e-12).all()
        previous = current
    torch.testing.assert_close(previous, exact, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("rank", [3, 8])
def test_from_gram_equals_exact(rank):
    a = _low_rank(2, 50, 8, rank)
    torch.testing.assert_close(leverage_scores_from_gram(a, a.mT @ a), leverage_scores(a),
                               rtol=1e-7, atol=1e-9)


def test_from_gram_accumulated_in_a_stream(torch_generator):
    a = torch.randn(90, 6, dtype=torch.float64, generator=torch_generator)
    gram = torch.zeros(6, 6, dtype=torch.float64)
    for block in a.split(16):
        gram += block.T @ block
    head = a[:10]
    torch.testing.assert_close(leverage_scores_from_gram(head, gram), leverage_scores(a)[:10],
                               rtol=1e-9, atol=1e-12)


def test_from_gram_with_ridge_equals_ridge_scores(torch_generator):
    a = torch.randn(3, 40, 7, dtype=torch.float64, generator=torch_generator)
    torch.testing.assert_close(leverage_scores_from_gram(a, a.mT @ a, ridge=0.5),
                               ridge_leverage_scores(a, 0.5), rtol=1e-9, atol=1e-12)


def test_from_gram_broadcasts_one_gram_over_a_batch(torch_generator):
    a = torch.randn(4, 12, 5, dtype=torch.float64, generator=torch_generator)
    gram = torch.randn(50, 5, dtype=torch.float64, generator=torch_generator)
    gram = gram.T @ gram
    out = leverage_scores_from_gram(a, gram)
    torch.testing.assert_close(out[2], leverage_scores_from_gram(a[2], gram))


@pytest.mark.parametrize("rank", [3, 8])
def test_from_kernel_equals_exact_for_wide_low_rank_features(rank):
    """n < feature dimension: the n x n kernel route gives the features' scores."""
    a = _low_rank(2, 12, 40, rank)
    torch.testing.assert_close(leverage_scores_from_kernel(a @ a.mT), leverage_scores(a),
                               rtol=1e-7, atol=1e-9)


def test_from_kernel_with_ridge_equals_ridge_scores(torch_generator):
    a = torch.randn(3, 15, 60, dtype=torch.float64, generator=torch_generator)
    torch.testing.assert_close(leverage_scores_from_kernel(a @ a.mT, ridge=0.5),
                               ridge_leverage_scores(a, 0.5), rtol=1e-9, atol=1e-12)


def test_from_kernel_rejects_non_square_kernel(torch_generator):
    with pytest.raises(ValueError, match="kernel"):
        leverage_scores_from_kernel(torch.randn(4, 5, dtype=torch.float64, generator=torch_generator))


@pytest.mark.statistical
@pytest.mark.parametrize("sketch", ["srht", "countsketch"])
def test_sketched_error_falls_with_sketch_size(sketch, torch_generator, seed, measure):
    gen = torch_generator
    seeds = iter(derive_seeds(seed, 12))
    a = torch.randn(1024, 12, dtype=torch.float64, generator=gen)
    a = a * torch.rand(1024, 1, dtype=torch.float64, generator=gen) ** 4  # heavy rows
    exact = leverage_scores(a)

    def error(size):
        errs = [((sketched_leverage_scores(a, sketch_size=size, sketch=sketch, generator=_gen(s)) - exact)
                 .abs() / exact).max() for s in (next(seeds) for _ in range(4))]
        return torch.stack(errs).mean().item()

    small, mid, large = error(48), error(192), error(768)
    # Subspace-embedding rate: ε ∝ 1/sqrt(size); a factor 4 expected, 2 required. Measured over
    # 300 seed offsets (0 failures), srht / countsketch: mid/small 0.26 +- 0.043 / 0.29 +- 0.048
    # (max 0.42 / 0.48), large/mid 0.22 +- 0.032 / 0.42 +- 0.064 (max 0.33 / 0.60), large/small
    # 0.056 +- 0.008 / 0.118 +- 0.019 (max 0.075 / 0.174), large 0.089 +- 0.007 / 0.193 +- 0.021
    # (max 0.109 / 0.271): every bound >= 9 sd from its mean.
    assert measure("mid_over_small", mid / small) < 1
    assert measure("large_over_mid", large / mid) < 1
    assert measure("large_over_small", large / small) < 1 / 2
    assert measure("large", large) < 0.5


def test_sketched_is_exact_with_the_full_hadamard(torch_generator):
    # sketch_size equal to the padded row count keeps every row of an orthogonal map.
    a = torch.randn(2, 64, 5, dtype=torch.float64, generator=torch_generator)
    torch.testing.assert_close(sketched_leverage_scores(a, sketch_size=64), leverage_scores(a),
                               rtol=1e-8, atol=1e-10)


@pytest.mark.statistical
def test_sketched_is_rank_aware(torch_generator, seed, measure):
    a = _low_rank(2, 256, 10, 3, generator=torch_generator)
    approx = sketched_leverage_scores(a, sketch_size=128, generator=_gen(derive_seed(seed, "sketch")))
    rel = measure("max_rel_err_of_sum", ((approx.sum(-1) - 3.0).abs() / 3.0).max().item())
    # Measured over 300 seed offsets (tools/stat_runs.py): 0.058 +- 0.036 (max 0.218), 0 failures;
    # 0.35 is 8 sd above the mean. Not rank-aware (scores summing to 10) gives 2.33.
    assert rel < 0.35


@pytest.mark.statistical
def test_sketched_jl_error_falls_with_jl_size(torch_generator, seed, measure):
    a = torch.randn(512, 32, dtype=torch.float64, generator=torch_generator)
    seeds = iter(derive_seeds(seed, 8))
    exact = leverage_scores(a)

    def error(jl):
        errs = [((sketched_leverage_scores(a, sketch_size=512, jl_size=jl, generator=_gen(s)) - exact)
                 .abs() / exact).mean() for s in (next(seeds) for _ in range(4))]
        return torch.stack(errs).mean().item()

    small = error(16)
    # Measured over 300 seed offsets: 0.252 +- 0.010 (max 0.278), 0 failures; 0.4 is 15 sd above.
    assert measure("large_over_small", error(256) / small) < 1 / 2.5


def test_sketched_generator_determinism(torch_generator):
    a = torch.randn(100, 4, generator=torch_generator)
    x = sketched_leverage_scores(a, sketch_size=20, generator=_gen(3))
    y = sketched_leverage_scores(a, sketch_size=20, generator=_gen(3))
    assert torch.equal(x, y)
    assert not torch.equal(x, sketched_leverage_scores(a, sketch_size=20, generator=_gen(4)))
    torch.manual_seed(3)
    z = sketched_leverage_scores(a, sketch_size=20)
    torch.manual_seed(3)
    assert torch.equal(z, sketched_leverage_scores(a, sketch_size=20))  # global generator


def test_sketched_rejects_bad_generator(torch_generator):
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        sketched_leverage_scores(torch.randn(50, 4, generator=torch_generator), sketch_size=8, generator=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'seed'"):
        sketched_leverage_scores(torch.randn(50, 4, generator=torch_generator), sketch_size=8, seed=3)


@pytest.mark.parametrize("fn", [
    leverage_scores,
    lambda a: ridge_leverage_scores(a, 0.1),
    lambda a: leverage_scores_from_gram(a, a.mT @ a),
    lambda a: sketched_leverage_scores(a, sketch_size=16, generator=_gen(0)),
])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtype_preserved(fn, dtype, torch_generator):
    a = torch.randn(2, 32, 4, generator=torch_generator).to(dtype)
    out = fn(a)
    assert out.dtype == dtype and out.shape == (2, 32)
    torch.testing.assert_close(out.float(), fn(a.float()), rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(torch_generator):
    a = torch.randn(2, 64, 6, dtype=torch.float64, generator=torch_generator)
    torch.testing.assert_close(leverage_scores(a.cuda()).cpu(), leverage_scores(a))
    torch.testing.assert_close(
        sketched_leverage_scores(a.cuda(), sketch_size=32, generator=_gen(0)).cpu(),
        sketched_leverage_scores(a, sketch_size=32, generator=_gen(0)),
    )


def test_rejects_vector(torch_generator):
    with pytest.raises(ValueError, match=r"A must have shape \[\.\.\., n, d\], got shape \[5\]"):
        leverage_scores(torch.randn(5, generator=torch_generator))


def test_rejects_integer_matrix():
    with pytest.raises(TypeError, match="A must have dtype in"):
        leverage_scores(torch.ones(5, 2, dtype=torch.int64))


def test_rejects_nan_matrix(torch_generator):
    a = torch.randn(5, 2, generator=torch_generator)
    a[0, 0] = float("nan")
    with pytest.raises(ValueError, match="A must be finite"):
        leverage_scores(a)


def test_rejects_out_of_range_rcond(torch_generator):
    with pytest.raises(ValueError, match="rcond must be <= 1.0, got 2.0"):
        leverage_scores(torch.randn(5, 2, generator=torch_generator), rcond=2.0)


def test_ridge_rejects_zero_lambda(torch_generator):
    with pytest.raises(ValueError, match="lam must be > 0.0, got 0.0"):
        ridge_leverage_scores(torch.randn(5, 2, generator=torch_generator), 0.0)


def test_from_gram_rejects_wrong_gram_shape(torch_generator):
    with pytest.raises(ValueError, match=r"gram must have shape \[\.\.\., 2, 2\].*got shape \[3, 3\]"):
        leverage_scores_from_gram(torch.randn(5, 2, generator=torch_generator), torch.eye(3))


def test_from_gram_rejects_dtype_mismatch(torch_generator):
    with pytest.raises(TypeError, match="gram must have the same dtype as A"):
        leverage_scores_from_gram(torch.randn(5, 2, generator=torch_generator), torch.eye(2, dtype=torch.float64))


def test_from_gram_rejects_negative_ridge(torch_generator):
    with pytest.raises(ValueError, match="ridge must be >= 0.0, got -1.0"):
        leverage_scores_from_gram(torch.randn(5, 2, generator=torch_generator), torch.eye(2), ridge=-1.0)


def test_sketched_rejects_too_small_sketch(torch_generator):
    with pytest.raises(ValueError, match="sketch_size must be >= min\\(n, d\\) = 4.*got 3"):
        sketched_leverage_scores(torch.randn(50, 4, generator=torch_generator), sketch_size=3)


def test_sketched_rejects_unknown_sketch(torch_generator):
    with pytest.raises(ValueError, match="sketch must be one of .*got 'gaussian'"):
        sketched_leverage_scores(torch.randn(50, 4, generator=torch_generator), sketch_size=8, sketch="gaussian")


def test_sketched_rejects_bad_jl_size(torch_generator):
    with pytest.raises(ValueError, match="jl_size must be >= 1, got 0"):
        sketched_leverage_scores(torch.randn(50, 4, generator=torch_generator), sketch_size=8, jl_size=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [2.0**-100, 1e-25, 1e30, 2.0**120])
def test_scores_are_scale_free_at_any_magnitude(dtype, scale, torch_generator):
    # A of 1e30 in float32 overflowed AᵀA (ridge scores NaN) and the SVD of the sketch
    # (LinAlgError); each matrix is scaled by a power of two inside
    a = torch.randn(2, 24, 4, dtype=torch.float64, generator=torch_generator)
    a[1] *= 1e-3  # per-matrix scaling: batch entries of different magnitude
    big = (a * scale).to(dtype)
    ref = a.to(dtype)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-12}
    torch.testing.assert_close(leverage_scores(big), leverage_scores(ref), **tol)
    torch.testing.assert_close(ridge_leverage_scores(big, 0.5 * scale**2),
                               ridge_leverage_scores(ref, 0.5), **tol)
    kernel = (a @ a.mT * scale).to(dtype)  # in range: the scores of a, from its Gram matrix
    torch.testing.assert_close(leverage_scores_from_kernel(kernel), leverage_scores(ref), **tol)
    kw = {"sketch_size": 16, "generator": _gen(0)}
    torch.testing.assert_close(sketched_leverage_scores(big, **kw),
                               sketched_leverage_scores(ref, sketch_size=16, generator=_gen(0)),
                               **tol)


def test_ridge_underflowing_after_scaling_keeps_zero_rows_finite():
    # diag(2^25, 0) with a tiny ridge: the scaled ridge underflows, 0 / 0 gave NaN
    a = torch.tensor([[2.0**25, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(ridge_leverage_scores(a, 1e-30), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(leverage_scores_from_kernel(a @ a.T, ridge=1e-30),
                               torch.tensor([1.0, 0.0]))
