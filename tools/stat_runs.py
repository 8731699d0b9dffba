"""Rerun the statistical tests under many seed offsets and count each test's failures.

Each run is one pytest process over the tests marked ``statistical`` with
``KS_TEST_SEED_OFFSET`` set to the run's offset, which shifts every seed the
``seed`` fixture derives (tests/conftest.py). A test whose threshold was set for
a failure probability below 1e-6 per run should fail in none of the runs; a
test that fails in some has a threshold to revisit (its seed is in the pytest
report: rerun ``KS_TEST_SEED_OFFSET=<offset> pytest <node id>``).

Not part of CI (minutes to hours). Run it under the bench lock on the shared
machine::

    flock /tmp/ks/bench.lock .venv/bin/python tools/stat_runs.py --runs 50 -n 2 \
        --out /tmp/stat_runs.json tests/inner tests/recovery

Offsets start at 1 (offset 0 is the suite's own seeds) unless ``--first`` says
otherwise. The table lists every statistical test that ran, with its number of
runs and failures (errors count as failures).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED_OFFSET_ENV = "KS_TEST_SEED_OFFSET"  # read by tests/seeding.py


def _outcomes(junit: Path) -> dict[str, bool]:
    """test id -> passed (skipped tests are left out) from a pytest junit file."""
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.find("skipped") is not None:
            continue
        name = f"{case.get('classname')}::{case.get('name')}"
        out[name] = case.find("failure") is None and case.find("error") is None
    return out


def run_once(offset: int, paths: list[str], workers: int, keyword: str | None,
             marker: str) -> dict[str, bool]:
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker,
               f"--junitxml={junit}", "-o", "junit_family=xunit2"]
        if workers > 1:
            cmd += ["-n", str(workers)]
        if keyword:
            cmd += ["-k", keyword]
        cmd += paths
        env = dict(os.environ, **{SEED_OFFSET_ENV: str(offset)})
        proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True,
                              text=True)
        if not junit.exists():
            raise RuntimeError(f"pytest wrote no report (exit {proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return _outcomes(junit)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=["tests"],
                        help="test paths or node ids (default: tests)")
    parser.add_argument("--runs", type=int, default=20, help="number of seed offsets")
    parser.add_argument("--first", type=int, default=1, help="first offset")
    parser.add_argument("-n", "--workers", type=int, default=1, help="pytest-xdist workers")
    parser.add_argument("-k", "--keyword", default=None, help="pytest -k expression")
    parser.add_argument("-m", "--marker", default="statistical",
                        help="pytest -m expression (default: statistical)")
    parser.add_argument("--out", default=None, help="write the counts as JSON to this file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")

    runs, failures, failed_offsets = Counter(), Counter(), {}
    start = time.monotonic()
    for i, offset in enumerate(range(args.first, args.first + args.runs)):
        outcome = run_once(offset, args.paths, args.workers, args.keyword, args.marker)
        for name, passed in outcome.items():
            runs[name] += 1
            if not passed:
                failures[name] += 1
                failed_offsets.setdefault(name, []).append(offset)
        bad = sum(not p for p in outcome.values())
        print(f"run {i + 1}/{args.runs} (offset {offset}): {len(outcome)} tests, {bad} failed, "
              f"{time.monotonic() - start:.0f} s", flush=True)

    width = max((len(n) for n in runs), default=10)
    print(f"\n{'test':<{width}}  runs  failures  offsets")
    for name in sorted(runs, key=lambda n: (-failures[n], n)):
        offsets = ",".join(map(str, failed_offsets.get(name, [])))
        print(f"{name:<{width}}  {runs[name]:4d}  {failures[name]:8d}  {offsets}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "paths": args.paths, "marker": args.marker, "keyword": args.keyword,
            "offsets": [args.first, args.first + args.runs - 1],
            "tests": {n: {"runs": runs[n], "failures": failures[n],
                          "failed_offsets": failed_offsets.get(n, [])} for n in sorted(runs)},
        }, indent=1))
    return 1 if any(failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
