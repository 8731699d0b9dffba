"""Kernel ridge regression on Dask for data larger than the process may hold.

A child process generates ``(X, y)`` chunk by chunk (``dask.array.random``, never
materialised: ``y = sin(x0) + x1 x2 + 0.1 noise``), then

1. baseline: the in-memory ``KernelRidge.fit`` on the first ``--baseline-rows`` rows,
   uncapped, timed (rows/s);
2. caps its address space at (its size after 1.) + ``--budget-mb`` with
   ``resource.setrlimit(RLIMIT_AS)`` and fits ``KernelRidge`` on all ``--rows`` rows as
   Dask arrays (threaded scheduler, ``--threads``), timed;
3. under the same cap, tries the in-memory fit on ``--in-memory-rows`` rows (default:
   all): it must fail with a MemoryError, which proves the cap is below what the
   in-memory arrays need (X: rows·d, Z: rows·D float64).

It reports the two throughputs (rows/s, their ratio), the peak RSS, the in-memory need
and the RMSE on a held-out chunk, as one JSON line (and to
benchmarks/results/distributed/krr_memory.json with ``--save``).
Features: ``PolynomialSketch(degree=2, n_components=D, coef0=1, kind="srht")`` (data-independent
draw, so ``fit`` takes the Dask array). Times: wall clock (``Stopwatch``).

Usage:
  python benchmarks/distributed/krr_memory.py --rows 20000000 --budget-mb 600 --save
  (the test suite runs it with --rows 400000; flock /tmp/ks/bench.lock on a shared machine)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "distributed"
# One BLAS / OpenMP thread and two malloc arenas: every thread's reserved address space
# counts against RLIMIT_AS.
CHILD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
             "MALLOC_ARENA_MAX": "2"}


def _vm_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(args) -> dict:
    import dask
    import dask.array as da
    import numpy as np
    import torch

    from kernelsketch.bench.timing import Stopwatch
    from kernelsketch.features import KernelRidge, PolynomialSketch

    torch.set_num_threads(1)
    d, D = args.features_in, args.components

    def data(rows, seed):
        rs = da.random.RandomState(seed)
        X = rs.standard_normal((rows, d), chunks=(args.chunk, d))
        y = da.sin(X[:, 0]) + X[:, 1] * X[:, 2] + 0.1 * rs.standard_normal(rows, chunks=args.chunk)
        return X, y

    def model():
        return KernelRidge(PolynomialSketch(degree=2, n_components=D, coef0=1.0, kind="srht",
                                            random_state=0), alpha=1.0)

    X, y = data(args.rows, 0)
    Xb, yb = (a.compute() for a in data(args.baseline_rows, 0))
    with Stopwatch() as base:
        model().fit(Xb, yb)
    del Xb, yb
    gc.collect()
    size = _vm_kb("VmSize") * 1024
    cap = size + args.budget_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    with dask.config.set(scheduler="threads", num_workers=args.threads), Stopwatch() as fit:
        est = model().fit(X, y)
        Xt, yt = data(args.chunk, 1)
        rmse = float(np.sqrt(((est.predict(Xt) - yt) ** 2).mean().compute()))
    in_memory_rows = args.in_memory_rows or args.rows
    try:
        Xm, ym = (a.compute() for a in data(in_memory_rows, 0))
        model().fit(Xm, ym)
        failed = False
    except MemoryError:
        failed = True
    except RuntimeError as err:  # torch's allocator
        if "alloc" not in str(err):
            raise
        failed = True
    return {
        "rows": args.rows, "features_in": d, "components": D, "chunk": args.chunk,
        "threads": args.threads, "budget_mb": args.budget_mb,
        "cap_mb": round(cap / 2**20), "size_before_cap_mb": round(size / 2**20),
        "in_memory_need_mb": round(args.rows * (d + D) * 8 / 2**20),
        "fit_s": round(fit.seconds, 2), "rows_per_s": round(args.rows / fit.seconds),
        "baseline_rows": args.baseline_rows, "baseline_fit_s": round(base.seconds, 3),
        "baseline_rows_per_s": round(args.baseline_rows / base.seconds),
        "throughput_ratio": round(args.rows / fit.seconds / (args.baseline_rows / base.seconds),
                                  3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "in_memory_rows": in_memory_rows, "in_memory_failed_under_cap": failed,
        "heldout_rmse": round(rmse, 4),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20_000_000)
    p.add_argument("--chunk", type=int, default=5_000)
    p.add_argument("--features-in", type=int, default=8)
    p.add_argument("--components", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget-mb", type=int, default=600)
    p.add_argument("--baseline-rows", type=int, default=200_000)
    p.add_argument("--in-memory-rows", type=int, default=0)
    p.add_argument("--save", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return {}
    out = subprocess.run([sys.executable, __file__, "--child", *(argv or sys.argv[1:])],
                         env={**os.environ, **CHILD_ENV}, capture_output=True, text=True,
                         check=False)
    if out.returncode:
        raise RuntimeError(f"the capped child failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=1))
    if args.save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "krr_memory.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
