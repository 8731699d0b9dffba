"""Sizes that cannot fit in memory raise ValueError naming the argument, before allocating.

``kernelsketch._checks.available_memory`` is patched to 64 MiB, so each case is
refused the same way on any machine (without the check they ended in
RuntimeError "DefaultCPUAllocator: can't allocate memory", MemoryError or the OOM
killer).
"""

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
    RademacherSketch,
    TensorSketch,
    TensorSRHT,
    importance_sample,
    sketched_leverage_scores,
    uniform_sample,
)


@pytest.fixture(autouse=True)
def _small_memory(monkeypatch):
    monkeypatch.setattr(_checks, "available_memory", lambda: 64 * 2**20)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: GaussianSketch(10**5, 10**3, seed=0), r"GaussianSketch\(d_in=100000, d_out=1000\)"),
        (lambda: RademacherSketch(10**5, 10**3, seed=0), r"RademacherSketch\(d_in=100000"),
        (lambda: SRHT(2**20, 2**23, seed=0), r"SRHT\(d_in=1048576, d_out=8388608\)"),
        (lambda: CountSketch(10**7, 4, seed=0), r"CountSketch\(d_in=10000000, d_out=4\)"),
        (lambda: AngularLSH(10**7, 8, seed=0), r"\[dim, n_bits\] = \[10000000, 8\]"),
        (lambda: TensorSketch(10**5, 8, 100, seed=0), r"TensorSketch\(d_in=100000, d_out=8, degree=100\)"),
        (lambda: TensorSRHT(2**15, 4096, 300, seed=0), r"TensorSRHT\(d_in=32768"),
        (lambda: PolySketch(512, 512, 64, kind="gaussian", seed=0), r"PolySketch\(d_in=512, d_out=512, degree=64"),
        (lambda: Degree2Sketch(2000, 64, kind="countsketch", seed=0), r"Degree2Sketch\(d_in=2000, d_out=64"),
    ],
)
def test_constructions_beyond_memory(make, match):
    with pytest.raises(ValueError, match=match + ".*more than the 0.0625 GiB of memory available"):
        make()


def test_degree_bounded():
    with pytest.raises(ValueError, match="degree must be <= 1024, got 2147483648"):
        PolySketch(3, 4, 2**31, seed=0)


@pytest.mark.parametrize(
    "module,x",
    [
        (lambda: TensorSketch(3, 2**22, 2, seed=0), torch.ones(4, 3)),
        (lambda: GaussianSketch(3, 2**10, seed=0), torch.ones(2**14, 3)),
        (lambda: PolySketch(3, 2**12, 8, seed=0), torch.ones(2**9, 3)),
        (lambda: AngularLSH(3, 30, seed=0), torch.ones(2**20, 3)),
    ],
)
def test_forward_outputs_beyond_memory(module, x):
    with pytest.raises(ValueError, match=r"output and intermediates for x of shape .* needs"):
        module()(x)


def test_degree2_forward_checks_the_broadcast_shape():
    s = Degree2Sketch(3, 2**12, kind="srht", seed=0)
    with pytest.raises(ValueError, match=r"for x of shape \[4096, 1, 3\]"):
        s(torch.ones(2**12, 1, 3), torch.ones(2**12, 3))
    with pytest.raises(ValueError, match="x and y must have broadcastable leading shapes"):
        s(torch.ones(2, 3), torch.ones(3, 3))


def test_sampling_beyond_memory():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"num_samples=2147483648\] indices and weights needs"):
        importance_sample(torch.ones(3), 2**31, generator=g)
    with pytest.raises(ValueError, match=r"num_samples=3\] indices and weights for n=4611686018427387904"):
        uniform_sample(2**62, 3, generator=g, replacement=False)
    with pytest.raises(ValueError, match=r"num_samples=2147483648\] indices and weights for n=2"):
        uniform_sample(2, 2**31, generator=g)


def test_sketched_leverage_beyond_memory():
    a = torch.ones(4, 2)
    with pytest.raises(ValueError, match="sketch_size=2147483648 and jl_size=None needs"):
        sketched_leverage_scores(a, sketch_size=2**31)
    with pytest.raises(ValueError, match="sketch_size=4 and jl_size=2147483648 needs"):
        sketched_leverage_scores(a, sketch_size=4, jl_size=2**31)
