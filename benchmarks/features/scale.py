"""Fit+transform time against n, and where features + a linear solve beat exact kernel ridge.

1. Scale: each feature map and its scikit-learn peer, ``fit_transform`` on n = 10^4, 10^5,
   10^6 synthetic rows (d = 8, standard normal, float64, m = 64 features: the 10^6 x 64
   output is 0.5 GB), one run each after an untimed warm-up, process CPU time (one torch / BLAS thread); the ratio
   to the peer at each n.
2. Crossover: ``KernelRidge(features)`` (m = 256, Cholesky solve) against scikit-learn's exact
   ``KernelRidge(kernel="rbf")`` on Friedman #1 (d = 10) at n = 500 ... 8000 rows: fit time
   ratio and test RMSE ratio; the crossover is the smallest n where the features fit faster.

Run: ``flock /tmp/ks/bench.lock python benchmarks/features/scale.py [--max-n 1000000]``;
writes ``benchmarks/results/features/scale.json``. ``--maps NAME ...`` (prefixes of the map
names), ``--n N ...``, ``--reps R`` (median of R timed runs per cell) and ``--no-crossover``
time a subset (printed only, no JSON written).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import make_friedman1
from sklearn.kernel_approximation import Nystroem, PolynomialCountSketch, RBFSampler
from sklearn.kernel_ridge import KernelRidge as ExactKernelRidge

from kernelsketch.bench.timing import Stopwatch
from kernelsketch.features import (
    GegenbauerFeatures,
    KernelRidge,
    PolynomialSketch,
    RLSNystroem,
    WeightedRandomBinning,
)

RESULTS = Path(__file__).resolve().parents[1] / "results" / "features"


def _maps(d: int, m: int):
    g = 1.0 / d
    ell = 1.0 / np.sqrt(2 * g)
    poly = {"degree": 2, "gamma": g, "coef0": 1.0}
    return [
        ("PolynomialSketch deg 2", lambda: PolynomialSketch(n_components=m, random_state=0, **poly),
         "PolynomialCountSketch",
         lambda: PolynomialCountSketch(n_components=m, random_state=0, **poly)),
        ("GegenbauerFeatures", lambda: GegenbauerFeatures(n_components=m, gamma=g, random_state=0),
         "RBFSampler", lambda: RBFSampler(n_components=m, gamma=g, random_state=0)),
        ("WeightedRandomBinning p=1",
         lambda: WeightedRandomBinning(n_components=m, kernel="laplacian", projection_dim=1,
                                       length_scale=ell, random_state=0),
         "RBFSampler", lambda: RBFSampler(n_components=m, gamma=g, random_state=0)),
        ("RLSNystroem", lambda: RLSNystroem(n_components=m, gamma=g, random_state=0),
         "Nystroem", lambda: Nystroem(n_components=m, gamma=g, random_state=0)),
    ]


def _time(make, X, reps=1):
    times = []
    for _ in range(reps):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Stopwatch("process") as sw:
                Z = make().fit_transform(X)
        del Z
        times.append(sw.seconds)
    return float(np.median(times))


def scale(ns, d=8, m=64, maps=None, reps=1):
    rows = []
    chosen = [row for row in _maps(d, m)
              if maps is None or any(row[0].startswith(name) for name in maps)]
    warm = np.random.default_rng(1).normal(size=(500, d))
    for _, make, _, make_peer in chosen:  # first calls (imports, allocator) untimed
        _time(make, warm), _time(make_peer, warm)
    for n in ns:
        X = np.random.default_rng(0).normal(size=(n, d))
        for name, make, peer, make_peer in chosen:  # interleaved: load hits both alike
            t, tp = _time(make, X, reps), _time(make_peer, X, reps)
            rows.append({"map": name, "peer": peer, "n": n, "d": d, "n_components": m,
                         "time_s": t, "peer_time_s": tp, "time_ratio": t / tp})
            print(f"scale {name:28s} n={n:8d} {t:8.3f} s vs {peer} {tp:8.3f} s "
                  f"ratio {t / tp:.2f}", flush=True)
    return rows


def crossover(ns, m=256):
    rows = []
    for n in ns:
        X, y = make_friedman1(n_samples=n + 1000, noise=1.0, random_state=0)
        X_tr, y_tr, X_te, y_te = X[:n], y[:n], X[n:], y[n:]
        g = 1.0 / X.shape[1]
        with Stopwatch("process") as sw:
            exact = ExactKernelRidge(kernel="rbf", gamma=g, alpha=0.1).fit(X_tr, y_tr)
        t_exact = sw.seconds
        rmse_exact = float(np.sqrt(np.mean((exact.predict(X_te) - y_te) ** 2)))
        for name, cls in (("GegenbauerFeatures", GegenbauerFeatures),
                          ("RLSNystroem", RLSNystroem)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Stopwatch("process") as sw:
                    model = KernelRidge(cls(n_components=m, gamma=g, random_state=0),
                                        alpha=0.1).fit(X_tr, y_tr)
            rmse = float(np.sqrt(np.mean((model.predict(X_te) - y_te) ** 2)))
            rows.append({"map": name, "n": n, "n_components": m, "fit_s": sw.seconds,
                         "exact_fit_s": t_exact, "time_ratio": sw.seconds / t_exact,
                         "rmse": rmse, "exact_rmse": rmse_exact,
                         "rmse_ratio": rmse / rmse_exact})
            print(f"crossover {name:20s} n={n:6d} fit {sw.seconds:.3f} s vs exact "
                  f"{t_exact:.3f} s (ratio {sw.seconds / t_exact:.2f}), RMSE ratio "
                  f"{rmse / rmse_exact:.3f}", flush=True)
    return rows


def _one_thread():
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


def main(max_n: int) -> dict:
    _one_thread()
    ns = [n for n in (10_000, 100_000, 1_000_000) if n <= max_n]
    result = {"config": {"clock": "process", "threads": "torch 1, BLAS 1", "dtype": "float64",
                         "device": f"CPU ({platform.machine()})",
                         "load_average_1_5_15_min": os.getloadavg()},
              "scale": scale(ns), "crossover": crossover((500, 1000, 2000, 4000, 8000))}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-n", type=int, default=1_000_000)
    parser.add_argument("--maps", nargs="+", help="only the maps whose names start so")
    parser.add_argument("--n", type=int, nargs="+", help="only these row counts")
    parser.add_argument("--reps", type=int, default=1, help="timed runs per cell (median)")
    parser.add_argument("--no-crossover", action="store_true")
    args = parser.parse_args()
    if args.maps or args.n or args.reps != 1 or args.no_crossover:  # a subset: printed only
        _one_thread()
        ns = args.n or [n for n in (10_000, 100_000, 1_000_000) if n <= args.max_n]
        scale(ns, maps=args.maps, reps=args.reps)
        if not args.no_crossover:
            crossover((500, 1000, 2000, 4000, 8000))
    else:
        main(args.max_n)
