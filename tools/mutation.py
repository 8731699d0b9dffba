"""Mutation testing of the core modules with mutmut (not part of CI: tens of minutes).

Each target mutates a few modules and runs only its own test files against
every mutant (mutmut 3: one fork per mutant, only the tests that reach the
mutated function, stopping at the first failure). A mutant is *killed* when a
test fails, *survived* when every test passes. The score of a target is
killed / (killed + survived + timeout + no tests), leaving out of the
denominator the mutants listed in ``EQUIVALENT`` (a change that cannot alter
any result, with the reason) and the surviving mutants that change only the
text of an error message (both reported apart).

Every target runs in a scratch copy of ``src/kernelsketch`` and ``tests/``
under ``--workdir`` (never in the repository). On the shared machine, run it
in the background under the bench lock::

    flock /tmp/ks/bench.lock nice -n 10 .venv/bin/python tools/mutation.py \\
        --out benchmarks/results/tests/mutation.json > /tmp/mutation.log 2>&1 &

``--targets sketch,inner`` runs a subset; ``--jobs`` sets mutmut's workers
(default 1). Needs ``pip install mutmut`` (3.x). The JSON holds, per target,
the counts, the score and every surviving mutant with its diff.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = "src/kernelsketch"

# name -> (modules to mutate, test files that run against them)
TARGETS: dict[str, tuple[list[str], list[str]]] = {
    "attn.merge": (["attn/common/merge.py"], ["tests/attn/common/test_merge.py"]),
    "attn.exact": (["attn/common/exact.py", "attn/common/gqa.py"],
                   ["tests/attn/common/test_exact.py", "tests/attn/common/test_merge.py"]),
    "attn.causal": (["attn/common/causal.py"],
                    ["tests/attn/common/test_causal.py", "tests/attn/hyper", "tests/attn/kde",
                     "tests/attn/test_sampled_gradients.py"]),
    "attn.sortlsh": (["attn/common/sortlsh/blocks.py"],
                     ["tests/attn/hyper", "tests/attn/kde", "tests/attn/test_sampled_gradients.py"]),
    "attn.metrics": (["attn/common/metrics.py"], ["tests/attn/common/test_metrics*.py"]),
    "attn.hyper": (["attn/hyper/naive.py", "attn/hyper/method.py", "attn/hyper/config.py"],
                   ["tests/attn/hyper", "tests/attn/test_sampled_gradients.py"]),
    "attn.kde": (["attn/kde/naive.py", "attn/kde/method.py", "attn/kde/config.py"],
                 ["tests/attn/kde", "tests/attn/test_sampled_gradients.py"]),
    "attn.polysketch": (["attn/polysketch/features.py", "attn/polysketch/naive.py",
                         "attn/polysketch/polynomial.py", "attn/polysketch/method.py"],
                        ["tests/attn/polysketch/test_polysketch.py",
                         "tests/attn/polysketch/test_polynomial.py"]),
    "attn.lev": (["attn/lev/selection.py", "attn/lev/method.py"], ["tests/attn/lev"]),
    "sketch": (["sketch/*.py"], ["tests/sketch"]),
    "inner": (["inner/minhash.py", "inner/linear.py", "inner/sampling.py", "inner/joint.py",
               "inner/join.py"],
              ["tests/inner/test_estimators.py", "tests/inner/test_join.py",
               "tests/inner/test_sketcher.py", "tests/inner/test_estimator_bias.py"]),
    "features.constants": (["features/_arccos.py", "features/_powerseries.py",
                            "features/activations.py"],
                           ["tests/features/test_activations.py", "tests/features/test_ntk.py"]),
}

# Mutants that cannot change any result: (function, text of the mutated line, reason).
# Matched against the '+' line of `mutmut show`, so they survive renumbering.
EQUIVALENT: list[tuple[str, str, str]] = [
    ("merge_partials", 'float("-INF")', "float() parses 'inf' case-insensitively"),
]

_STRING = re.compile(r"""[rbf]*("[^"]*"|'[^']*')""")


def _message_only(diff: str) -> bool:
    """Whether a mutant changes only the text of an error or warning message.

    Such mutants are counted apart: the tests match the argument's name in the
    message (``pytest.raises(..., match=name)``), which case or padding changes
    of the rest of the text do not alter.
    """
    removed = [ln[1:] for ln in diff.splitlines() if ln.startswith("-")]
    added = [ln[1:] for ln in diff.splitlines() if ln.startswith("+")]
    if len(removed) != 1 or len(added) != 1:
        return False
    old, new = removed[0].strip(), added[0].replace("(None)", '("")').strip()
    if _STRING.sub('""', old) != _STRING.sub('""', new):
        return False
    return bool(re.match(r"""(raise |[rbf]*["'])""", old)) or "Error(" in old or "warn(" in old


def _glob_tests(root: Path, patterns: list[str]) -> list[str]:
    out = []
    for p in patterns:
        hits = sorted(str(h.relative_to(root)) for h in root.glob(p))
        out.extend(hits)
    return out


def _prepare(workdir: Path, modules: list[str], tests: list[str]) -> list[str]:
    if workdir.exists():
        shutil.rmtree(workdir)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(REPO / PKG, workdir / PKG, ignore=ignore)
    shutil.copytree(REPO / "tests", workdir / "tests", ignore=ignore)
    test_paths = _glob_tests(workdir, tests)
    if not test_paths:
        raise SystemExit(f"no test files match {tests}")
    only = [f"{PKG}/{m}" for m in modules]
    # The repository's pytest settings (markers, addopts) plus the mutmut table.
    text = (REPO / "pyproject.toml").read_text()
    text += "\n[tool.mutmut]\n" + "\n".join([
        f'source_paths = ["{PKG}"]',
        f"only_mutate = {json.dumps(only)}",
        f"pytest_add_cli_args_test_selection = {json.dumps(test_paths)}",
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]',
    ]) + "\n"
    (workdir / "pyproject.toml").write_text(text)
    return test_paths


def _statuses(workdir: Path) -> dict[str, str]:
    from mutmut.stats import status_by_exit_code

    out = {}
    for meta in sorted((workdir / "mutants").rglob("*.meta")):
        data = json.loads(meta.read_text())
        for name, code in data["exit_code_by_key"].items():
            out[name] = status_by_exit_code[code]
    return out


def _show(workdir: Path, name: str) -> str:
    r = subprocess.run([sys.executable, "-m", "mutmut", "show", name], check=False,
                       cwd=workdir, capture_output=True, text=True)
    lines = r.stdout.splitlines()
    return "\n".join(ln for ln in lines if ln.startswith(("-", "+")) and not
                     ln.startswith(("---", "+++")))


def _equivalent(name: str, diff: str) -> str | None:
    func = name.rsplit(".", 1)[-1].split("__mutmut_")[0]
    added = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+")]
    for f, line, reason in EQUIVALENT:
        if func.endswith(f) and any(line in a for a in added):
            return reason
    return None


def run_target(name: str, workdir: Path, jobs: int) -> dict:
    modules, tests = TARGETS[name]
    test_paths = _prepare(workdir, modules, tests)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs)],
                       check=False, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    statuses = _statuses(workdir)
    counts = Counter(statuses.values())
    survivors, equivalent, message = [], [], []
    for mutant, status in sorted(statuses.items()):
        if status in ("survived", "timeout", "no tests", "suspicious"):
            diff = _show(workdir, mutant)
            reason = _equivalent(mutant, diff)
            entry = {"mutant": mutant, "status": status, "diff": diff}
            if reason is not None and status == "survived":
                equivalent.append({**entry, "reason": reason})
            elif status == "survived" and _message_only(diff):
                message.append(entry)
            else:
                survivors.append(entry)
    scored = sum(counts[s] for s in ("killed", "survived", "timeout", "no tests", "suspicious"))
    denominator = scored - len(equivalent) - len(message)
    return {
        "modules": modules,
        "tests": test_paths,
        "mutants": len(statuses),
        "counts": dict(counts),
        "equivalent": equivalent,
        "message_only": message,
        "survivors": survivors,
        "score": counts["killed"] / denominator if denominator else None,
        "wall_s": round(wall, 1),
        "mutmut_exit": r.returncode,
        "mutmut_tail": (r.stdout + r.stderr)[-2000:] if r.returncode else "",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help=f"comma-separated subset of {', '.join(TARGETS)}")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/kernelsketch-mutation"))
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path, help="JSON summary (merged into an existing file)")
    args = ap.parse_args(argv)
    names = [t for t in args.targets.split(",") if t]
    unknown = [t for t in names if t not in TARGETS]
    if unknown:
        ap.error(f"unknown targets {unknown}; choose from {list(TARGETS)}")
    results = {}
    if args.out and args.out.exists():
        results = json.loads(args.out.read_text()).get("targets", {})
    for name in names:
        res = run_target(name, args.workdir / name, args.jobs)
        results[name] = res
        c = res["counts"]
        print(f"{name:20s} mutants {res['mutants']:5d}  killed {c.get('killed', 0):5d}  "
              f"survived {c.get('survived', 0):4d}  timeout {c.get('timeout', 0):3d}  "
              f"no tests {c.get('no tests', 0):3d}  equivalent {len(res['equivalent']):3d}  "
              f"message-only {len(res['message_only']):3d}  "
              f"score {res['score'] if res['score'] is None else round(res['score'], 3)}  "
              f"({res['wall_s']:.0f} s)", flush=True)
        if res["mutmut_exit"]:
            print(res["mutmut_tail"], flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            import mutmut

            args.out.write_text(json.dumps({"tool": f"mutmut {mutmut.__version__}",
                                            "targets": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
