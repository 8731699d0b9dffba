"""Rerun the statistical tests under many seed offsets: failures and measured statistics.

One pytest run over the tests marked ``statistical`` with ``--seed-repeats N``
(tests/conftest.py): each test runs once per seed offset ``K .. K+N-1``, with the
seed ``KS_TEST_SEED_OFFSET=<offset>`` would give it. Per test, the report lists
its runs, its failures (with their offsets) and, for every statistic the test
records with the ``measure`` fixture, its distribution over the runs (mean,
standard deviation, min, max). Thresholds are set from these distributions for a
failure probability below 1e-6 per run; a test that fails here has a threshold to
revisit (reproduce one failure with ``KS_TEST_SEED_OFFSET=<offset> pytest <node id>``).

Not part of CI (minutes). On the shared machine, under the bench lock::

    flock /tmp/ks/bench.lock .venv/bin/python tools/stat_runs.py --runs 200 -n 2 \\
        --out /tmp/stat_runs.json tests/inner tests/recovery

Offsets start at 1 (0 is the suite's own seeds) unless ``--first`` says otherwise.
Offsets run in chunks of ``--chunk`` (one pytest process each); ``--out`` is
rewritten after every chunk, so an interrupted run keeps what it measured.
"""

import argparse
import contextlib
import io
import json
import math
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_REPEAT = re.compile(r"seedrep(\d+)")


def _split(name: str) -> tuple[str, int]:
    """(test name without its seedrepK parameter, K)."""
    match = _REPEAT.search(name)
    if match is None:
        return name, 0
    tag = match.group(0)
    base = name.replace(f"-{tag}", "").replace(f"{tag}-", "").replace(f"[{tag}]", "")
    return base, int(match.group(1))


def collect(junit: Path) -> dict[str, dict]:
    """Per test: runs, failed offsets, and the values of each measured statistic."""
    tests = defaultdict(lambda: {"runs": 0, "failed_offsets": [], "measures": defaultdict(list)})
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.find("skipped") is not None:
            continue
        name, offset = _split(f"{case.get('classname')}::{case.get('name')}")
        entry = tests[name]
        entry["runs"] += 1
        if case.find("failure") is not None or case.find("error") is not None:
            entry["failed_offsets"].append(offset)
        for prop in case.iter("property"):
            key = prop.get("name", "")
            if key.startswith("measure:"):
                entry["measures"][key[len("measure:"):]].append(float(prop.get("value")))
    return tests


def summary(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean": mean, "sd": sd, "min": min(values), "max": max(values)}


def run_chunk(first: int, runs: int, args) -> dict[str, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "statistical",
               f"--seed-repeats={runs}", f"--seed-first={first}",
               f"--junitxml={junit}", "-o", "junit_family=xunit1"]
        if args.workers > 1:
            cmd += ["-n", str(args.workers)]
        if args.keyword:
            cmd += ["-k", args.keyword]
        proc = subprocess.run(cmd + args.paths, check=False, cwd=ROOT, capture_output=True,
                              text=True)
        if not junit.exists():
            raise SystemExit(f"pytest wrote no report (exit {proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return collect(junit)


def merge(into: dict, part: dict) -> None:
    for name, t in part.items():
        entry = into.setdefault(name, {"runs": 0, "failed_offsets": [], "measures": {}})
        entry["runs"] += t["runs"]
        entry["failed_offsets"] += t["failed_offsets"]
        for key, values in t["measures"].items():
            entry["measures"].setdefault(key, []).extend(values)


def report(tests: dict, args, elapsed: float, done: int) -> None:
    print(f"\n{len(tests)} statistical tests x {done} offsets "
          f"({args.first}..{args.first + done - 1}) in {elapsed:.0f} s")
    for name in sorted(tests, key=lambda n: (-len(tests[n]["failed_offsets"]), n)):
        t = tests[name]
        failed = sorted(t["failed_offsets"])
        line = f"{name}: {len(failed)}/{t['runs']} failed"
        if failed:
            line += f" (offsets {','.join(map(str, failed[:20]))}{'...' if len(failed) > 20 else ''})"
        print(line)
        for key, values in sorted(t["measures"].items()):
            s = summary(values)
            print(f"    {key}: mean {s['mean']:.4g}  sd {s['sd']:.3g}  min {s['min']:.4g}  "
                  f"max {s['max']:.4g}  (n={s['n']})")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "paths": args.paths, "keyword": args.keyword,
            "offsets": [args.first, args.first + done - 1], "seconds": round(elapsed),
            "tests": {n: {"runs": t["runs"], "failed_offsets": sorted(t["failed_offsets"]),
                          "measures": {k: {**summary(v), "values": v}
                                       for k, v in t["measures"].items()}}
                      for n, t in sorted(tests.items())},
        }, indent=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=["tests"],
                        help="test paths or node ids (default: tests)")
    parser.add_argument("--runs", type=int, default=100, help="seed offsets per test")
    parser.add_argument("--first", type=int, default=1, help="first offset")
    parser.add_argument("--chunk", type=int, default=10,
                        help="offsets per pytest run; results are reported after each")
    parser.add_argument("-n", "--workers", type=int, default=1, help="pytest-xdist workers")
    parser.add_argument("-k", "--keyword", default=None, help="pytest -k expression")
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.chunk < 1:
        parser.error(f"--runs and --chunk must be >= 1, got {args.runs} and {args.chunk}")

    start, tests, done = time.monotonic(), {}, 0
    while done < args.runs:
        runs = min(args.chunk, args.runs - done)
        merge(tests, run_chunk(args.first + done, runs, args))
        done += runs
        print(f"offsets {args.first}..{args.first + done - 1} done, "
              f"{time.monotonic() - start:.0f} s", flush=True)
        if done == args.runs:
            report(tests, args, time.monotonic() - start, done)
        elif args.out:  # partial results survive an interrupted run
            report_quietly(tests, args, time.monotonic() - start, done)
    return 1 if any(t["failed_offsets"] for t in tests.values()) else 0


def report_quietly(tests: dict, args, elapsed: float, done: int) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        report(tests, args, elapsed, done)


if __name__ == "__main__":
    sys.exit(main())
