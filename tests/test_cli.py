import json

import pytest
import torch

from kernelsketch.attn.hyper import HyperConfig
from kernelsketch.bench.attention import Variant, format_table, run
from kernelsketch.bench.timing import Stopwatch, time_ms
from kernelsketch.cli import main


def test_bench_runs_methods_against_exact_baseline_and_writes_json(tmp_path):
    cfg = HyperConfig(block_size=32, sample_size=32, min_seq_len=16)
    res = run(device="cpu", ns=[128], causal=True, heads=2, head_dim=16, reps=1,
              variants=[Variant("hyper-small", "hyper", cfg),
                        Variant("hyper-full", "hyper", HyperConfig.full_budget(128))],
              inputs=("random", "planted"), out_dir=tmp_path, tag="t")
    data = json.loads((tmp_path / "t_cpu_causal.json").read_text())
    labels = {r["label"] for r in data["rows"]}
    assert labels == {"sdpa", "hyper-small", "hyper-full"}
    full = [r for r in data["rows"] if r["label"] == "hyper-full"]
    assert all(r["rel_error"] < 1e-5 and r["spectral_error"] < 1e-5 for r in full)
    small = [r for r in data["rows"] if r["label"] == "hyper-small"]
    assert all(r["rel_error"] > 1e-4 for r in small)
    assert all(r["speedup_fwd"] > 0 and r["fwd_bwd_ms"] > 0 for r in data["rows"])
    table = format_table(res)
    assert "hyper-small" in table and "CPU" in table


def test_cli_rejects_unknown_command():
    with pytest.raises(SystemExit):
        main(["nope"])
    with pytest.raises(SystemExit):
        main(["bench", "nope"])


@pytest.mark.parametrize("argv, prog", [
    (["bench", "attention", "--help"], "kernelsketch bench attention"),
    (["eval-lm", "--help"], "kernelsketch eval-lm"),
])
def test_cli_help_of_a_subcommand_is_its_own(argv, prog, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {prog}")


def test_demo_writes_table_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from kernelsketch import demo

    demo.main(out_dir=str(tmp_path), ns=(128,))
    out = capsys.readouterr().out
    assert "results folder" in out and "hyper" in out
    assert (tmp_path / "demo_error_vs_speedup.png").stat().st_size > 1000


@pytest.mark.parametrize("clock", ["wall", "process"])
def test_time_ms_counts_the_work_on_either_clock(clock):
    def busy():
        total = 0
        for i in range(200_000):
            total += i
        return total

    assert time_ms(busy, torch.device("cpu"), reps=2, clock=clock) > 0.1
    assert time_ms(lambda: None, torch.device("cpu"), reps=2, clock=clock) < 1.0


def test_time_ms_rejects_unknown_clock():
    with pytest.raises(ValueError, match="clock"):
        time_ms(lambda: None, torch.device("cpu"), clock="gpu")


def test_time_ms_rejects_process_clock_off_cpu():
    with pytest.raises(ValueError, match="process"):
        time_ms(lambda: None, torch.device("meta"), clock="process")


@pytest.mark.parametrize("clock", ["wall", "process"])
def test_stopwatch_times_one_block_on_either_clock(clock):
    with Stopwatch(clock) as sw:
        total = 0
        for i in range(200_000):
            total += i
    assert sw.seconds > 1e-4 and sw.ms == pytest.approx(sw.seconds * 1e3)
    running = Stopwatch(clock).start()
    assert 0 <= running.elapsed() < 1.0


def test_stopwatch_checks_its_clock_like_time_ms():
    with pytest.raises(ValueError, match="clock"):
        Stopwatch("gpu")
    with pytest.raises(ValueError, match="process"):
        Stopwatch("process", device="meta")
    with pytest.raises(RuntimeError, match="start"):
        Stopwatch().elapsed()
