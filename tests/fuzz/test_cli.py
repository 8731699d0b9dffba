"""Fuzz: the command line with random option values.

Every argv either runs (the work itself is replaced by a stub that records
what it was given: checked values of the documented types and ranges), or is
an argparse error: exit status 2 and a message naming the offending option.
Never a traceback.
"""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernelsketch.bench.attention as bench
from kernelsketch import demo
from kernelsketch.attn import available_methods
from kernelsketch.cli import main
from kernelsketch.eval import lm

from .contract import examples

pytestmark = pytest.mark.timeout(300)


def texts():
    """Option values: numbers, lists, names, junk."""
    return st.one_of(
        st.integers(-3, 10**6).map(str),
        st.lists(st.integers(-2, 5000), min_size=1, max_size=3).map(lambda v: ",".join(map(str, v))),
        st.sampled_from(["abc", "", "1.5", "1e3", "0x10", "64,", ",", "cpu", "cuda", "cuda:0",
                         "meta", "nope", "float32", "float64", "int8", "random", "planted",
                         "random,planted", "hyper", "exact,lev", "hyper:block_size=64",
                         "hyper:block_size=abc", "lev:eps=0.1", "polysketch:exact_local=maybe",
                         "a/b", "tag_1"]),
        st.text(alphabet="0123456789,-.:=abcxyz/", max_size=8),
    )


BENCH_OPTIONS = ["--device", "--n", "--dtype", "--batch", "--heads", "--head-dim", "--methods",
                 "--inputs", "--reps"]
BENCH_FLAGS = ["--causal", "--no-backward"]
EVAL_OPTIONS = ["--contexts", "--layers", "--windows", "--device", "--dtype", "--seed", "--tag"]


@pytest.fixture
def recorded(monkeypatch):
    """The work behind each command replaced by a recorder."""
    calls = []

    def bench_run(**kwargs):
        calls.append(("bench", kwargs))
        return {"rows": [], "path": "x"}

    monkeypatch.setattr(bench, "run", bench_run)
    monkeypatch.setattr(bench, "format_table", lambda result: "")
    monkeypatch.setattr(lm, "run_lm_eval", lambda **kwargs: calls.append(("eval-lm", kwargs)))
    monkeypatch.setattr(demo, "main", lambda **kwargs: calls.append(("demo", kwargs)) or 0)
    return calls


def check_outcome(argv, recorded, capsys, given_options):
    recorded.clear()
    try:
        code = main(argv)
    except SystemExit as exc:
        assert exc.code == 2, f"exit {exc.code} for {argv}"
        err = capsys.readouterr().err
        message = err[err.index("error:"):]
        named = [o for o in given_options if re.search(rf"arguments? (\S+, )*{o}\b", message)]
        generic = ("unrecognized arguments", "the following arguments are required",
                   "argument command:", "argument family:")
        assert named or any(g in message for g in generic), err
        return None
    assert code == 0 and len(recorded) == 1
    return recorded[0][1]


@settings(max_examples=examples(80))
@given(options=st.lists(st.tuples(st.sampled_from(BENCH_OPTIONS), texts()), max_size=4),
       flags=st.lists(st.sampled_from(BENCH_FLAGS), max_size=2, unique=True))
def test_bench_attention_values(options, flags, recorded, capsys, tmp_path):
    argv = ["bench", "attention", "--out-dir", str(tmp_path)]
    for option, value in options:
        argv += [option, value]
    kwargs = check_outcome(argv + flags, recorded, capsys, [o for o, _ in options])
    if kwargs is None:
        return
    assert all(isinstance(n, int) and n >= 1 for n in kwargs["ns"])
    assert all(isinstance(kwargs[a], int) and kwargs[a] >= 1
               for a in ("batch", "heads", "head_dim", "reps"))
    assert torch.device(kwargs["device"]).type == "cpu" or torch.cuda.is_available()
    assert set(kwargs["inputs"]) <= {"random", "planted"}
    assert kwargs["variants"] is None or {v.method for v in kwargs["variants"]} <= set(
        available_methods())


@settings(max_examples=examples(60))
@given(options=st.lists(st.tuples(st.sampled_from(EVAL_OPTIONS), texts()), max_size=4),
       methods=st.lists(texts(), max_size=2))
def test_eval_lm_values(options, methods, recorded, capsys, tmp_path):
    argv = ["eval-lm", "--out-dir", str(tmp_path)]
    for option, value in options:
        argv += [option, value]
    if methods:
        argv += ["--methods", *methods]
    given_options = [o for o, _ in options] + (["--methods"] if methods else [])
    kwargs = check_outcome(argv, recorded, capsys, given_options)
    if kwargs is None:
        return
    assert all(2 <= c <= 8192 for c in kwargs["contexts"])
    assert all(0 <= L <= 30 for L in kwargs["layers"]) and kwargs["windows"] >= 1
    for spec in kwargs["methods"] or []:
        lm.parse_method_spec(spec)  # accepted specs parse


@settings(max_examples=examples(20))
@given(argv=st.lists(texts(), max_size=3))
def test_arbitrary_words_after_each_command(argv, recorded, capsys, tmp_path):
    for command in (["demo", "--out-dir", str(tmp_path)], ["bench"], []):
        check_outcome(command + argv, recorded, capsys, [])
