import json

import pytest
import torch

from kernelsketch.attn.hyper import HyperConfig
from kernelsketch.bench.attention import Variant, format_table, run
from kernelsketch.bench.timing import Stopwatch, time_ms
from kernelsketch.cli import main


def test_bench_runs_methods_against_exact_baseline_and_writes_json(tmp_path):
    cfg = HyperConfig(block_size=32, sample_size=32, min_seq_len=16, sink=0, window=0)
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


@pytest.mark.parametrize("argv, prog, options", [
    (["bench", "attention", "--help"], "kernelsketch bench attention",
     ["--device", "--n", "--causal", "--dtype", "--batch", "--heads", "--head-dim", "--methods",
      "--inputs", "--no-backward", "--reps", "--out-dir"]),
    (["eval-lm", "--help"], "kernelsketch eval-lm",
     ["--methods", "--contexts", "--layers", "--windows", "--device", "--dtype", "--seed",
      "--out-dir", "--tag", "--no-plot", "--threads", "--segment", "--per-window"]),
    (["demo", "--help"], "kernelsketch demo", ["--out-dir"]),
    (["bench", "--help"], "kernelsketch bench", ["attention"]),
    (["--help"], "kernelsketch", ["--version", "demo", "bench", "eval-lm"]),
])
def test_cli_help_of_a_subcommand_is_its_own_and_lists_its_options(argv, prog, options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog} ")
    assert all(option in out for option in options), out


def test_cli_version_is_the_package_version(capsys):
    import importlib.metadata

    import kernelsketch

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"kernelsketch {kernelsketch.__version__}\n"
    assert importlib.metadata.version("kernelsketch") == kernelsketch.__version__


BAD_ARGV = [  # (argv, the option the message must name, text of the message)
    (["bench", "attention", "--n", "abc"], "--n", "expected an int, got 'abc'"),
    (["bench", "attention", "--n", "-5"], "--n", "expected an int >= 1, got -5"),
    (["bench", "attention", "--n", "0"], "--n", ">= 1, got 0"),
    (["bench", "attention", "--n", "64,"], "--n", "comma-separated ints"),
    (["bench", "attention", "--n", str(10**12)], "", ("arguments --n, --batch, --heads, "
                                                     "--head-dim: inputs of batch 1 x 4 heads")),
    (["bench", "attention", "--batch", "0"], "--batch", ">= 1, got 0"),
    (["bench", "attention", "--heads", "-1"], "--heads", ">= 1, got -1"),
    (["bench", "attention", "--head-dim", "0"], "--head-dim", ">= 1, got 0"),
    (["bench", "attention", "--reps", "0"], "--reps", ">= 1, got 0"),
    (["bench", "attention", "--reps", "1.5"], "--reps", "expected an int"),
    (["bench", "attention", "--device", "nope"], "--device", "expected a torch device"),
    (["bench", "attention", "--device", "cuda:99"], "--device", "not available"),
    (["bench", "attention", "--inputs", "nope"], "--inputs", "random, planted"),
    (["bench", "attention", "--methods", "hyper,nope"], "--methods", "exact, polynomial"),
    (["bench", "attention", "--dtype", "int8"], "--dtype", "invalid choice"),
    (["bench", "attention", "--bogus"], "", "unrecognized arguments: --bogus"),
    (["eval-lm", "--contexts", "abc"], "--contexts", "expected an int, got 'abc'"),
    (["eval-lm", "--contexts", "9000"], "--contexts", "in [2, 8192], got 9000"),
    (["eval-lm", "--layers", "31"], "--layers", "in [0, 30], got 31"),
    (["eval-lm", "--windows", "0"], "--windows", ">= 1, got 0"),
    (["eval-lm", "--seed", "-1"], "--seed", "got -1"),
    (["eval-lm", "--device", "nope"], "--device", "expected a torch device"),
    (["eval-lm", "--tag", "../x"], "--tag", "expected letters"),
    (["eval-lm", "--methods", "hyper:block_size=abc"], "--methods",
     "field block_size must be an int, got 'abc'"),
    (["eval-lm", "--methods", "hyper:block_size=0"], "--methods", "block_size must be >= 1"),
    (["eval-lm", "--methods", "nope"], "--methods", "method must be one of"),
    (["demo", "--bogus"], "", "unrecognized arguments: --bogus"),
    ([], "", "the following arguments are required"),
]


@pytest.mark.parametrize("argv, option, text", BAD_ARGV, ids=[" ".join(a[0]) for a in BAD_ARGV])
def test_bad_cli_values_are_argparse_errors(argv, option, text, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err if option else "error:" in err
    assert text in err, err


@pytest.mark.parametrize("command", [["bench", "attention"], ["eval-lm"], ["demo"]])
@pytest.mark.parametrize("where", ["under_a_file", "read_only"])
def test_unwritable_out_dir_is_an_argparse_error(command, where, tmp_path, capsys):
    import os

    blocker = tmp_path / "file"
    blocker.write_text("")
    if where == "under_a_file":
        out = blocker / "results"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes to read-only directories")
        (tmp_path / "ro").mkdir(mode=0o500)
        out = tmp_path / "ro" / "results"
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--out-dir", str(out), *(["--n", "8"] if command[0] == "bench" else [])])
    assert exit_info.value.code == 2
    assert "argument --out-dir: cannot write to" in capsys.readouterr().err


def test_bench_command_line_runs_and_writes_json(tmp_path, capsys):
    code = main(["bench", "attention", "--device", "cpu", "--n", "32", "--heads", "1",
                 "--head-dim", "8", "--reps", "1", "--methods", "exact,lev", "--inputs",
                 "random,planted", "--no-backward", "--out-dir", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "attention_cpu_noncausal.json").read_text())
    assert {(r["label"], r["inputs"]) for r in data["rows"]} == {
        (label, kind) for label in ("sdpa", "exact", "lev") for kind in ("random", "planted")}


def test_demo_writes_table_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from kernelsketch import demo

    demo.main(out_dir=str(tmp_path), ns=(128,))
    out = capsys.readouterr().out
    assert "results folder" in out and "hyper" in out
    assert (tmp_path / "demo_error_vs_speedup.png").stat().st_size > 1000


def test_demo_runs_every_default_config_past_its_exact_fallback():
    import inspect

    from kernelsketch import demo
    from kernelsketch.attn import get_method
    from kernelsketch.attn.common.causal import recursion_is_exact

    ns = inspect.signature(demo.main).parameters["ns"].default
    for var in demo.demo_variants():
        assert var.config == get_method(var.method).config_cls()  # the defaults, unchanged
        if hasattr(var.config, "min_seq_len"):
            assert min(ns) > var.config.min_seq_len
            assert not recursion_is_exact(min(ns), min(ns), var.config.min_seq_len)


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
