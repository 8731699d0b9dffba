"""Tensor-power sketches: TensorSketch, TensorSRHT, Degree2Sketch, PolySketch."""

import math

import pytest
import torch

from kernelsketch.sketch.tensor import Degree2Sketch, PolySketch, TensorSketch, TensorSRHT
from tests.seeding import derive_seeds
from tests.sketch.stats import assert_unbiased, correlated_pair

KINDS = ["gaussian", "srht", "countsketch", "tensorsketch"]


def _outer_power(x: torch.Tensor, q: int) -> torch.Tensor:
    """Explicit x^{⊗q} [..., d**q] (row-major in the factor order)."""
    out = x
    for _ in range(q - 1):
        out = (out.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)
    return out


@pytest.mark.parametrize("q", [1, 2, 3])
def test_tensorsketch_is_countsketch_of_the_explicit_tensor_power(q, torch_generator, seed):
    d, m = 5, 7
    ts = TensorSketch(d, m, q, seed=seed).double()
    x = torch.randn(3, d, dtype=torch.float64, generator=torch_generator)
    # Oracle: CountSketch of x^{⊗q} with bucket sum_k h_k(i_k) mod m and sign prod_k s_k(i_k).
    bucket = torch.zeros(1, dtype=torch.int64)
    sign = torch.ones(1, dtype=torch.float64)
    for f in ts.factors:
        bucket = (bucket.unsqueeze(-1) + f.buckets.unsqueeze(0)).flatten()
        sign = (sign.unsqueeze(-1) * f.signs.unsqueeze(0)).flatten()
    dense = torch.zeros(d**q, m, dtype=torch.float64)
    dense[torch.arange(d**q), bucket % m] = sign
    torch.testing.assert_close(ts(x), _outer_power(x, q) @ dense, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("q", [1, 2, 3])
def test_tensorsrht_equals_product_formula(q, torch_generator, seed):
    d, m = 6, 10
    s = TensorSRHT(d, m, q, seed=seed).double()
    x = torch.randn(4, d, dtype=torch.float64, generator=torch_generator)
    expected = math.sqrt(m) ** (q - 1) * torch.stack([x @ f.matrix for f in s.factors]).prod(0)
    torch.testing.assert_close(s(x), expected, rtol=1e-10, atol=1e-10)


def test_degree2_gaussian_is_polysketchformer_formula(torch_generator, seed):
    d, m = 6, 9
    s = Degree2Sketch(d, m, kind="gaussian", seed=seed).double()
    s1, s2 = (math.sqrt(m) * f.matrix for f in s.sketch.factors)
    x, y = torch.randn(2, 3, d, dtype=torch.float64, generator=torch_generator)
    torch.testing.assert_close(s(x, y), (x @ s1) * (y @ s2) / math.sqrt(m), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s(x), s(x, x), rtol=0, atol=0)


def test_degree2_countsketch_is_countsketch_of_outer_product(torch_generator, seed):
    d, m = 4, 6
    s = Degree2Sketch(d, m, kind="countsketch", seed=seed).double()
    x, y = torch.randn(2, 5, d, dtype=torch.float64, generator=torch_generator)
    outer = (x.unsqueeze(-1) * y.unsqueeze(-2)).flatten(-2)
    torch.testing.assert_close(s(x, y), outer @ s.sketch.matrix, rtol=1e-12, atol=1e-12)


@pytest.mark.statistical
@pytest.mark.parametrize("cls", [TensorSketch, TensorSRHT])
@pytest.mark.parametrize("q", [2, 3, 4])
def test_tensor_sketch_unbiased_for_powers_of_inner_product(cls, q, torch_generator, seed, measure):
    x, y = correlated_pair(8, 2, 0.85, torch_generator)
    truth = (x * y).sum(-1) ** q
    est = torch.stack(
        [(s(x) * s(y)).sum(-1) for s in (cls(8, 32, q, seed=i) for i in derive_seeds(seed, 300))]
    )
    # Bonferroni-corrected t bound over the 2 entries (z = 5.14, < 1e-6 per run). Measured over
    # 60 seed offsets (tools/stat_runs.py), 0 failures: max |z| means 0.95-1.42, max 3.75. The
    # power guard: rel_stderr at q = 4 (TensorSRHT) 0.076 +- 0.016, max 0.117 (30 offsets), so
    # its bound is 0.25 (11 sd; the default 0.12 was 2.8 sd above the mean).
    measure("max_abs_z", assert_unbiased(est, truth, max_rel_stderr=0.25, measure=measure))


@pytest.mark.statistical
@pytest.mark.parametrize("kind", KINDS)
def test_degree2_sketch_unbiased_for_pair_products(kind, torch_generator, seed, measure):
    x, x2 = correlated_pair(6, 2, 0.8, torch_generator)
    y, y2 = correlated_pair(6, 2, -0.7, torch_generator)
    truth = (x * x2).sum(-1) * (y * y2).sum(-1)
    sketches = (Degree2Sketch(6, 16, kind=kind, seed=i) for i in derive_seeds(seed, 300))
    est = torch.stack([(s(x, y) * s(x2, y2)).sum(-1) for s in sketches])
    # Bonferroni t bound over 2 entries (z = 5.14, < 1e-6). Measured over 60 seed offsets, 0
    # failures: max |z| means 0.99-1.40, max 2.77; rel_stderr <= 0.055 +- 0.004 (max 0.068; 0.12).
    measure("max_abs_z", assert_unbiased(est, truth, measure=measure))


@pytest.mark.statistical
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("q", [3, 4])
def test_polysketch_unbiased(kind, q, torch_generator, seed, measure):
    x, y = correlated_pair(6, 2, 0.9, torch_generator)
    truth = (x * y).sum(-1) ** q
    sketches = (PolySketch(6, 32, q, kind=kind, seed=i) for i in derive_seeds(seed, 400))
    est = torch.stack([(s(x) * s(y)).sum(-1) for s in sketches])
    # Bonferroni t bound over 2 entries (z = 5.11, < 1e-6). 400 sketches (200 left gaussian q = 4
    # failing the power guard at 0.127). Measured max |z| over 60 seed offsets: means 0.78-1.38,
    # max 3.96 (gaussian q = 4). rel_stderr over 30 offsets: gaussian q = 4 0.077 +- 0.015, max
    # 0.132 (heavy-tailed: it exceeded 0.12 at offset 25 of 1..30), others <= 0.071 +- 0.009;
    # bound 0.25 is 11 sd above.
    measure("max_abs_z", assert_unbiased(est, truth, max_rel_stderr=0.25, measure=measure))


@pytest.mark.statistical
def test_polysketch_all_powers_unbiased(torch_generator, seed, measure):
    x, y = correlated_pair(6, 1, 0.9, torch_generator)
    truth = torch.stack([(x * y).sum(-1) ** j for j in range(4)], -1)
    est = []
    for i in derive_seeds(seed, 200):
        s = PolySketch(6, 32, 3, seed=i)
        px, py = s.all_powers(x), s.all_powers(y)
        est.append(torch.stack([(a * b).sum(-1) for a, b in zip(px, py)], -1))
    est = torch.stack(est)
    torch.testing.assert_close(est[..., 0], torch.ones_like(est[..., 0]), rtol=0, atol=0)
    # Bonferroni t bound over 3 entries (z = 5.28, < 1e-6). Measured over 60 seed offsets, 0
    # failures: max |z| 1.26 +- 0.59, max 2.85; rel_stderr 0.047 +- 0.004 (max 0.054; bound 0.12).
    measure("max_abs_z", assert_unbiased(est[..., 1:], truth[..., 1:], measure=measure))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("degree", [1, 3, 4])
def test_polysketch_all_powers_consistent(kind, degree, torch_generator, seed):
    s = PolySketch(5, 12, degree, kind=kind, seed=seed)
    x = torch.randn(2, 3, 5, dtype=torch.float64, generator=torch_generator)
    powers = s.all_powers(x)
    assert len(powers) == degree + 1
    assert all(p.shape == (2, 3, 12) and p.dtype == torch.float64 for p in powers)
    torch.testing.assert_close(powers[degree], s(x), rtol=1e-12, atol=1e-12)
    # Entry j is homogeneous of degree j in x (entry 0 is the constant feature).
    c = 1.7
    for j, (p, pc) in enumerate(zip(powers, s.all_powers(c * x))):
        torch.testing.assert_close(pc, c**j * p, rtol=1e-10, atol=1e-10)
    # Entry 1 is a linear sketch of x.
    y = torch.randn(2, 3, 5, dtype=torch.float64, generator=torch_generator)
    torch.testing.assert_close(
        s.all_powers(x + y)[1], powers[1] + s.all_powers(y)[1], rtol=1e-10, atol=1e-10
    )


@pytest.mark.statistical
@pytest.mark.parametrize("make", [
    lambda m, i: TensorSRHT(64, m, 2, seed=i),
    lambda m, i: TensorSketch(64, m, 2, seed=i),
    lambda m, i: PolySketch(64, m, 2, kind="srht", seed=i),
    lambda m, i: PolySketch(64, m, 4, kind="gaussian", seed=i),
], ids=["tensorsrht", "tensorsketch", "polysketch-srht-2", "polysketch-gaussian-4"])
def test_distortion_falls_with_sketch_size(make, torch_generator, seed, measure):
    x = torch.randn(8, 64, dtype=torch.float64, generator=torch_generator)
    x = x / x.norm(dim=-1, keepdim=True)
    seeds = derive_seeds(seed, 16)

    def distortion(m, sketch_seeds):
        errs = [((make(m, i)(x) ** 2).sum(-1) - 1).abs() for i in sketch_seeds]
        return torch.stack(errs).mean().item()

    small, large = distortion(16, seeds[:8]), distortion(512, seeds[8:])
    # Rate 1/sqrt(m): a factor sqrt(32) ~ 5.7 expected. Measured over 60 seed offsets, 0 failures:
    # 0.14-0.19 +- 0.02-0.03 (max 0.24), polysketch-gaussian-4 0.21 +- 0.05 (max 0.33; the old
    # bound 1 / 2.5 was 4 sd above): 0.55 is >= 6.8 sd above every mean.
    ratio = measure("large_over_small", large / small)
    assert ratio < 0.55


@pytest.mark.parametrize("make", [
    lambda seed: TensorSketch(6, 8, 3, seed=seed),
    lambda seed: TensorSRHT(6, 8, 3, seed=seed),
    lambda seed: PolySketch(6, 8, 3, kind="srht", seed=seed),
    lambda seed: PolySketch(6, 8, 2, kind="countsketch", seed=seed),
], ids=["tensorsketch", "tensorsrht", "polysketch-srht", "polysketch-countsketch"])
def test_differentiable(make, torch_generator, seed):
    s = make(seed).double()
    x = torch.randn(2, 6, dtype=torch.float64, requires_grad=True, generator=torch_generator)
    assert torch.autograd.gradcheck(s, (x,))


def test_degree2_differentiable_in_both_arguments(torch_generator, seed):
    s = Degree2Sketch(5, 6, kind="tensorsketch", seed=seed).double()
    x, y = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True, generator=torch_generator)
    assert torch.autograd.gradcheck(s, (x, y))


def test_degree2_broadcasts_leading_shapes(torch_generator, seed):
    s = Degree2Sketch(5, 6, kind="srht", seed=seed)
    x, y = torch.randn(4, 1, 5, generator=torch_generator), torch.randn(3, 5, generator=torch_generator)
    out = s(x, y)
    assert out.shape == (4, 3, 6)
    torch.testing.assert_close(out[2, 1], s(x[2, 0], y[1]))


@pytest.mark.parametrize("make", [
    lambda seed: TensorSketch(16, 8, 2, seed=seed),
    lambda seed: TensorSRHT(16, 8, 3, seed=seed),
    lambda seed: PolySketch(16, 8, 3, kind="gaussian", seed=seed),
])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_preserved(make, dtype, torch_generator, seed):
    s = make(seed)
    x = torch.randn(4, 16, dtype=torch.float64, generator=torch_generator) / 4
    out = s(x.to(dtype))
    assert out.dtype == dtype and out.shape == (4, 8)
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 5e-2
    torch.testing.assert_close(out.double(), s(x), rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", KINDS)
def test_polysketch_seed_and_state_dict(kind, torch_generator):
    a, b, c = (PolySketch(6, 8, 3, kind=kind, seed=s) for s in (1, 1, 2))
    x = torch.randn(3, 6, generator=torch_generator)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert not torch.equal(a(x), c(x))
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x), c(x), rtol=0, atol=0)
    g = PolySketch(6, 8, 3, kind=kind, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a(x), g(x), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_cpu(kind, torch_generator):
    x = torch.randn(3, 6, dtype=torch.float64, generator=torch_generator)
    cpu = PolySketch(6, 8, 3, kind=kind, seed=0)
    gpu = PolySketch(6, 8, 3, kind=kind, seed=0).to("cuda")
    torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x))
    for p, q in zip(gpu.all_powers(x.cuda()), cpu.all_powers(x)):
        torch.testing.assert_close(p.cpu(), q)


@pytest.mark.parametrize("cls", [TensorSketch, TensorSRHT, PolySketch])
def test_rejects_zero_degree(cls, seed):
    with pytest.raises(ValueError, match="degree must be >= 1, got 0"):
        cls(4, 4, 0, seed=seed)


@pytest.mark.parametrize("cls", [TensorSketch, TensorSRHT, PolySketch])
def test_rejects_non_int_degree(cls, seed):
    with pytest.raises(TypeError, match="degree must be an int, got float 2.0"):
        cls(4, 4, 2.0, seed=seed)


@pytest.mark.parametrize("cls", [Degree2Sketch, PolySketch])
def test_rejects_unknown_kind(cls, seed):
    args = (4, 4) if cls is Degree2Sketch else (4, 4, 2)
    with pytest.raises(ValueError, match="kind must be one of .*got 'hadamard'"):
        cls(*args, kind="hadamard", seed=seed)


def test_rejects_seed_and_generator_together():
    with pytest.raises(ValueError, match="either seed or generator, not both"):
        PolySketch(4, 4, 2, seed=0, generator=torch.Generator())


def test_degree2_rejects_wrong_y_dim(torch_generator, seed):
    with pytest.raises(ValueError, match=r"y must have shape \[\.\.\., 4\] \(d_in=4\), got shape \[2, 3\]"):
        Degree2Sketch(4, 4, seed=seed)(torch.randn(2, 4, generator=torch_generator), torch.randn(2, 3, generator=torch_generator))


def test_degree2_rejects_y_dtype_mismatch(torch_generator, seed):
    with pytest.raises(TypeError, match="y must have the same dtype as x"):
        Degree2Sketch(4, 4, seed=seed)(torch.randn(2, 4, generator=torch_generator), torch.randn(2, 4, dtype=torch.float64, generator=torch_generator))


def test_polysketch_rejects_wrong_input_dim(torch_generator, seed):
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 4\]"):
        PolySketch(4, 4, 2, seed=seed).all_powers(torch.randn(2, 5, generator=torch_generator))


def test_tensorsketch_rejects_nan(torch_generator, seed):
    x = torch.randn(2, 4, generator=torch_generator)
    x[0, 1] = float("inf")
    with pytest.raises(ValueError, match="x must be finite"):
        TensorSketch(4, 4, 2, seed=seed)(x)
