"""Gray codes and angular LSH (sortLSH bucket order)."""

import math

import pytest
import torch

from kernelsketch.sketch.lsh import AngularLSH, gray_code, inverse_gray_code
from tests.seeding import derive_seed


def _popcount(v: torch.Tensor) -> torch.Tensor:
    count = torch.zeros_like(v)
    while bool((v > 0).any()):
        count += v & 1
        v = v >> 1
    return count


def _sign_codes(lsh: AngularLSH, x: torch.Tensor) -> torch.Tensor:
    """Independent oracle: c = sum_i [x . w_i > 0] 2**i in float64."""
    bits = (x.double() @ lsh.planes.double()) > 0
    weights = torch.tensor([1 << i for i in range(lsh.n_bits)], dtype=torch.int64)
    return (bits.long() * weights).sum(-1)


def test_consecutive_gray_codes_differ_in_one_bit():
    r = torch.arange(1 << 14, dtype=torch.int64)
    assert (_popcount(gray_code(r) ^ gray_code(r + 1)) == 1).all()


@pytest.mark.parametrize("n_bits", [1, 3, 8])
def test_gray_code_is_a_permutation_of_each_range(n_bits):
    r = torch.arange(1 << n_bits)
    assert torch.equal(gray_code(r).sort().values, r)


def test_inverse_gray_code_inverts(torch_generator):
    r = torch.randint(0, 1 << 62, (1000,), dtype=torch.int64, generator=torch_generator)
    assert torch.equal(inverse_gray_code(gray_code(r)), r)
    assert torch.equal(gray_code(inverse_gray_code(r)), r)
    small = torch.randint(0, 1 << 30, (100,), dtype=torch.int32, generator=torch_generator)
    assert inverse_gray_code(small).dtype == torch.int32
    assert torch.equal(gray_code(inverse_gray_code(small)), small)


def test_bucket_ids_are_inverse_gray_of_sign_codes(torch_generator, seed):
    lsh = AngularLSH(12, 9, seed=seed)
    x = torch.randn(5, 40, 12, dtype=torch.float64, generator=torch_generator)
    ids = lsh(x)
    assert ids.dtype == torch.int64 and ids.shape == (5, 40)
    assert ((ids >= 0) & (ids < 2**9)).all()
    codes = _sign_codes(lsh, x)
    assert torch.equal(lsh.codes(x), codes)
    # Direction of the permutation: gray_code(id) == sign code, so ids r and
    # r + 1 hold sign patterns one hyperplane apart.
    assert torch.equal(gray_code(ids), codes)


def test_adjacent_bucket_ids_hold_sign_patterns_one_bit_apart(torch_generator, seed):
    lsh = AngularLSH(16, 6, seed=seed)
    x = torch.randn(20000, 16, generator=torch_generator)
    ids = lsh(x).unique()
    codes = {int(i): int(c) for i, c in zip(lsh(x), lsh.codes(x))}
    adjacent = ids[1:][ids[1:] == ids[:-1] + 1]
    assert adjacent.numel() > 20
    diffs = [(codes[int(r)] ^ codes[int(r) - 1]).bit_count() for r in adjacent]
    assert set(diffs) == {1}


@pytest.mark.statistical
def test_bit_disagreement_rate_is_angle_over_pi(torch_generator, seed, measure):
    # SimHash: each hyperplane separates x and y with probability theta / pi.
    gen = torch_generator
    lsh = AngularLSH(32, 30, seed=derive_seed(seed, "lsh"))
    x = torch.randn(4000, 32, generator=gen, dtype=torch.float64)
    y = x + 0.8 * torch.randn(4000, 32, generator=gen, dtype=torch.float64)
    theta = torch.arccos(torch.nn.functional.cosine_similarity(x, y, dim=-1))
    differing = _popcount(lsh.codes(x) ^ lsh.codes(y)).double()
    predicted = 30 * theta / math.pi
    n = differing.numel()
    stderr = (differing - predicted).std() / math.sqrt(n)
    z = measure("abs_z", abs((differing - predicted).mean()).item() / stderr.item())
    # The mean of 4000 i.i.d. terms: |z| ~ half-normal, P(|z| > 5.5) = 3.8e-8. Measured over
    # 300 seed offsets (tools/stat_runs.py): 0.72 +- 0.56, max 3.21, 0 failures.
    assert z < 5.5
    assert stderr < 0.02 * predicted.mean()


@pytest.mark.statistical
def test_nearby_vectors_get_close_bucket_ids(torch_generator, seed, measure):
    gen = torch_generator
    lsh = AngularLSH(16, 8, seed=derive_seed(seed, "lsh"))
    x = torch.randn(2000, 16, generator=gen)
    near = x + 0.05 * x.norm(dim=-1, keepdim=True) * torch.randn(2000, 16, generator=gen)
    far = torch.randn(2000, 16, generator=gen)
    near_gap = (lsh(x) - lsh(near)).abs().float()
    far_gap = (lsh(x) - lsh(far)).abs().float()
    # Same bucket iff no hyperplane separates them: probability (1 - theta/pi)**8.
    theta = torch.arccos(torch.nn.functional.cosine_similarity(x.double(), near.double(), dim=-1))
    collide = (near_gap == 0).double()
    predicted = (1 - theta / math.pi) ** 8
    stderr = (collide - predicted).std() / math.sqrt(2000)
    z = measure("abs_z", abs((collide - predicted).mean()).item() / stderr.item())
    # Half-normal |z| (2000 terms): P(|z| > 5.5) = 3.8e-8. Measured over 300 offsets:
    # 0.84 +- 0.62, max 3.06. The gap ratio: 0.170 +- 0.011 (max 0.213); 1/3 is 15 sd above.
    assert z < 5.5
    assert measure("near_over_far_gap", (near_gap.mean() / far_gap.mean()).item()) < 1 / 3


@pytest.mark.statistical
def test_sorting_by_bucket_groups_clusters(torch_generator, seed, measure):
    gen = torch_generator
    centres = torch.randn(8, 24, generator=gen)
    labels = torch.arange(8).repeat_interleave(32)
    x = centres[labels] + 0.03 * torch.randn(256, 24, generator=gen) * centres[labels].norm(
        dim=-1, keepdim=True
    )
    order = AngularLSH(24, 7, seed=derive_seed(seed, "lsh"))(x).argsort(stable=True)
    same_neighbour = measure("same_neighbour", (labels[order][1:] == labels[order][:-1]).float().mean().item())
    # A random order gives 1/8. Measured over 300 seed offsets:
    # 0.940 +- 0.016 (min 0.843), 0 failures; the lower tail is heavier than
    # normal (a cluster cut by a hyperplane), so 0.7 sits far below the observed minimum.
    assert same_neighbour > 0.7


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_accepts_float_dtypes(dtype, torch_generator, seed):
    lsh = AngularLSH(8, 5, seed=seed)
    x = torch.randn(3, 7, 8, generator=torch_generator)
    ids = lsh(x.to(dtype))
    assert ids.dtype == torch.int64 and ids.shape == (3, 7)
    if dtype in (torch.float32, torch.float64):
        assert torch.equal(ids, lsh(x))


def test_seed_and_state_dict(torch_generator):
    a, b, c = AngularLSH(8, 6, seed=1), AngularLSH(8, 6, seed=1), AngularLSH(8, 6, seed=2)
    assert torch.equal(a.planes, b.planes) and not torch.equal(a.planes, c.planes)
    assert a.planes.shape == (8, 6)
    assert set(a.state_dict()) == {"planes"}
    c.load_state_dict(a.state_dict())
    x = torch.randn(50, 8, generator=torch_generator)
    assert torch.equal(a(x), c(x))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(torch_generator):
    lsh = AngularLSH(8, 6, seed=0)
    x = torch.randn(64, 8, dtype=torch.float64, generator=torch_generator)
    assert torch.equal(lsh.to("cuda")(x.cuda()).cpu(), AngularLSH(8, 6, seed=0)(x))


def test_rejects_zero_bits(seed):
    with pytest.raises(ValueError, match="n_bits must be >= 1, got 0"):
        AngularLSH(8, 0, seed=seed)


def test_rejects_too_many_bits(seed):
    with pytest.raises(ValueError, match="n_bits must be <= 30, got 31"):
        AngularLSH(8, 31, seed=seed)


def test_rejects_zero_dim(seed):
    with pytest.raises(ValueError, match="dim must be >= 1, got 0"):
        AngularLSH(0, 4, seed=seed)


def test_rejects_wrong_input_dim(torch_generator, seed):
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 8\]"):
        AngularLSH(8, 4, seed=seed)(torch.randn(3, 9, generator=torch_generator))


def test_rejects_nan_input(torch_generator, seed):
    x = torch.randn(3, 8, generator=torch_generator)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x must be finite"):
        AngularLSH(8, 4, seed=seed)(x)


def test_gray_code_rejects_float():
    with pytest.raises(TypeError, match="r must have dtype in"):
        gray_code(torch.ones(3))


def test_gray_code_rejects_negative():
    with pytest.raises(ValueError, match="r must be non-negative"):
        gray_code(torch.tensor([3, -1]))


def test_inverse_gray_code_rejects_negative():
    with pytest.raises(ValueError, match="c must be non-negative"):
        inverse_gray_code(torch.tensor([-4]))
