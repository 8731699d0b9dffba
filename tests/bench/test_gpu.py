"""``kernelsketch bench gpu``: its own --help, and a clear refusal without a CUDA device."""

import pytest
import torch

from kernelsketch.bench.gpu import KERNEL_TESTS
from kernelsketch.cli import main


def test_help_is_the_gpu_benchmarks_own(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "gpu", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: kernelsketch bench gpu")
    for option in ("--n", "--heads", "--head-dim", "--skip-tests", "--out-dir"):
        assert option in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine this runs the benchmark")
def test_without_cuda_it_stops_with_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "gpu"])
    assert exit_.value.code == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_the_kernel_tests_it_runs_exist():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert all((root / path).is_file() for path in KERNEL_TESTS)
