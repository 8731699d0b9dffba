"""Each kernelsketch feature map against the scikit-learn map a user would pick instead.

Same data, same run, equal ``n_components`` (equal output width), mean over ``SEEDS``:

- Gram error ``||Z Z^T - K||_F / ||K||_F`` on up to ``ERROR_ROWS`` evenly spaced rows, each map
  against the kernel it approximates (RBFSampler, GegenbauerFeatures, Nystroem, RLSNystroem:
  the Gaussian ``exp(-gamma |x-y|^2)``; the polynomial maps: ``(gamma <x,y> + coef0)^q``;
  WeightedRandomBinning: its own induced kernel, ``erfcx(|x-y| / (sqrt(2) l))`` for
  ``kernel="laplacian", projection_dim=1``, with ``l = 1 / sqrt(2 gamma)``);
- fit + transform time on all rows (at most ``MAX_ROWS``), process CPU clock
  (:class:`kernelsketch.bench.timing.Stopwatch`), one torch and one BLAS thread;
- kernel ridge regression test RMSE (regression data sets) of ``KernelRidge`` on
  GegenbauerFeatures / WeightedRandomBinning vs on RBFSampler, alpha chosen on a hold-out
  part of the training split.

Pairs: PolynomialSketch vs PolynomialCountSketch (degree 2 and 3, gamma = 1/d, coef0 = 1);
GegenbauerFeatures and WeightedRandomBinning vs RBFSampler (gamma = 1/d on standardised
data); RLSNystroem vs Nystroem. Data: every scikit-learn / statsmodels data set that ships
offline with 8 to 100 features and at least 150 rows (digits as pixels / 16, the others
standardised). Prints one table (map x data set x error ratio x time ratio vs the peer) and
writes ``benchmarks/results/features/vs_sklearn.json``.

Run: ``flock /tmp/ks/bench.lock python benchmarks/features/vs_sklearn.py [--quick]``; one map:
``--only PolynomialSketch --reps 5 --out vs_sklearn_poly.json`` (median of 5 fits per seed);
``--kind countsketch`` sets PolynomialSketch's ``kind``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from sklearn import datasets as skd
from sklearn.kernel_approximation import Nystroem, PolynomialCountSketch, RBFSampler
from sklearn.metrics.pairwise import polynomial_kernel, rbf_kernel
from sklearn.preprocessing import StandardScaler

from kernelsketch.bench.timing import Stopwatch, time_ms
from kernelsketch.features import (
    GegenbauerFeatures,
    KernelRidge,
    PolynomialSketch,
    RLSNystroem,
    WeightedRandomBinning,
    weighted_binning_kernel,
)

SEEDS = (0, 1, 2)
ERROR_ROWS = 1500
MAX_ROWS = 6000
ALPHAS = (0.01, 0.1, 1.0)
RESULTS = Path(__file__).resolve().parents[1] / "results" / "features"


def load_datasets() -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """(X, y or None) per data set; y only where it is a regression target."""
    out = {"digits/16": (skd.load_digits().data / 16.0, None)}
    for name, loader in (("breast_cancer", skd.load_breast_cancer), ("wine", skd.load_wine)):
        out[name] = (StandardScaler().fit_transform(loader().data), None)
    X, y = skd.load_diabetes(return_X_y=True)
    out["diabetes"] = (StandardScaler().fit_transform(X), y)
    try:
        import statsmodels.api as sm
    except ImportError:
        return out
    for name, target in (("fair", None), ("randhie", None), ("star98", None)):
        ds = getattr(sm.datasets, name).load_pandas()
        X = ds.exog.select_dtypes("number").to_numpy(float)
        y = np.asarray(ds.endog, dtype=float)
        y = y[:, 0] / y.sum(1) if y.ndim == 2 else y  # star98: share above the median
        keep = np.linspace(0, len(X) - 1, min(len(X), MAX_ROWS)).round().astype(int)
        out[name] = (StandardScaler().fit_transform(X[keep]), y[keep])
    macro = sm.datasets.macrodata.load_pandas().data.drop(columns=["year", "quarter"])
    out["macrodata"] = (StandardScaler().fit_transform(macro.to_numpy(float)), None)
    return out


def _pairs(d: int, kind: str | None = None):
    g = 1.0 / d
    ell = 1.0 / np.sqrt(2 * g)
    pairs = []
    ours = {"kind": kind} if kind else {}
    for q in (2, 3):
        kw = {"degree": q, "gamma": g, "coef0": 1.0}
        pairs.append((f"PolynomialSketch deg {q}" + (f" kind={kind}" if kind else ""),
                      "PolynomialCountSketch",
                      lambda m, s, kw=kw: PolynomialSketch(n_components=m, random_state=s, **kw,
                                                           **ours),
                      lambda m, s, kw=kw: PolynomialCountSketch(n_components=m, random_state=s,
                                                                **kw),
                      lambda X, kw=kw: polynomial_kernel(X, **kw), None))
    rbf = (lambda m, s: RBFSampler(n_components=m, gamma=g, random_state=s))
    pairs.append(("GegenbauerFeatures", "RBFSampler",
                  lambda m, s: GegenbauerFeatures(n_components=m, gamma=g, random_state=s), rbf,
                  lambda X: rbf_kernel(X, gamma=g), None))
    pairs.append(("WeightedRandomBinning (laplacian, projection_dim=1)", "RBFSampler",
                  lambda m, s: WeightedRandomBinning(kernel="laplacian", length_scale=ell,
                                                     projection_dim=1, n_components=m,
                                                     random_state=s), rbf,
                  lambda X: weighted_binning_kernel(X, kernel="laplacian", length_scale=ell,
                                                    projection_dim=1),
                  lambda X: rbf_kernel(X, gamma=g)))
    pairs.append(("RLSNystroem", "Nystroem",
                  lambda m, s: RLSNystroem(n_components=m, gamma=g, random_state=s),
                  lambda m, s: Nystroem(n_components=m, gamma=g, random_state=s),
                  lambda X: rbf_kernel(X, gamma=g), None))
    return pairs


def _fit_transform(make, m, seed, X, reps=1):
    """Features and fit+transform seconds (``reps > 1``: median of ``reps`` more fits)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Stopwatch("process") as sw:
            Z = make(m, seed).fit_transform(X)
        if reps > 1:
            return Z, time_ms(lambda: make(m, seed).fit_transform(X), warmup=0, reps=reps,
                              clock="process") / 1e3
    return Z, sw.seconds


def _gram_error(est_Z, K, rows):
    Z = est_Z[rows]
    Z = Z.toarray() if sp.issparse(Z) else np.asarray(Z, dtype=np.float64)
    return float(np.linalg.norm(Z @ Z.T - K) / np.linalg.norm(K))


def _krr_rmse(make, m, X, y, seed):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    cut = int(0.8 * len(y))
    tr, te = perm[:cut], perm[cut:]
    ys = (y - y[tr].mean()) / y[tr].std()
    inner = int(0.75 * len(tr))

    def rmse(a, fit_rows, test_rows):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = KernelRidge(make(m, seed), alpha=a).fit(X[fit_rows], ys[fit_rows])
        return float(np.sqrt(np.mean((model.predict(X[test_rows]) - ys[test_rows]) ** 2)))

    alpha = min(ALPHAS, key=lambda a: rmse(a, tr[:inner], tr[inner:]))
    return rmse(alpha, tr, te)


def run(components=(256, 1024), quick=False, only=None, reps=1, out=None, kind=None) -> dict:
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    rows_out = []
    data = load_datasets()
    if quick:
        data = {k: data[k] for k in ("digits/16", "breast_cancer", "diabetes")}
    for dname, (X, y) in data.items():
        n, d = X.shape
        erows = np.unique(np.linspace(0, n - 1, min(n, ERROR_ROWS)).round().astype(int))
        for name, peer, make, make_peer, kernel, peer_kernel in _pairs(d, kind):
            if only is not None and only not in name:
                continue
            K = kernel(X[erows])
            K_peer = K if peer_kernel is None else peer_kernel(X[erows])
            for m in components:
                e, ep, t, tp = [], [], [], []
                for s in SEEDS:
                    Z, sec = _fit_transform(make, m, s, X, reps)
                    Zp, secp = _fit_transform(make_peer, m, s, X, reps)
                    e.append(_gram_error(Z, K, erows))
                    ep.append(_gram_error(Zp, K_peer, erows))
                    t.append(sec)
                    tp.append(secp)
                row = {"map": name, "peer": peer, "dataset": dname, "n": n, "d": d,
                       "n_components": m, "error": float(np.mean(e)),
                       "peer_error": float(np.mean(ep)), "time_s": float(np.mean(t)),
                       "peer_time_s": float(np.mean(tp))}
                row["error_ratio"] = row["error"] / max(row["peer_error"], 1e-300)
                row["time_ratio"] = row["time_s"] / max(row["peer_time_s"], 1e-9)
                if y is not None and m == components[0] and peer == "RBFSampler":
                    r = np.mean([_krr_rmse(make, m, X, y, s) for s in SEEDS])
                    rp = np.mean([_krr_rmse(make_peer, m, X, y, s) for s in SEEDS])
                    row.update(krr_rmse=float(r), peer_krr_rmse=float(rp),
                               krr_rmse_ratio=float(r / rp))
                rows_out.append(row)
                krr = f" KRR RMSE ratio {row['krr_rmse_ratio']:.3f}" if "krr_rmse" in row else ""
                print(f"{name:34s} {dname:14s} n={n:5d} d={d:3d} m={m:5d} "
                      f"err {row['error']:.4f} vs {row['peer_error']:.4f} "
                      f"ratio {row['error_ratio']:.3f}  time ratio {row['time_ratio']:.2f}{krr}",
                      flush=True)
        _write(rows_out, components, quick, reps, out, kind)  # after every data set: partial rows
    return _write(rows_out, components, quick, reps, out, kind)


def _write(rows_out, components, quick, reps=1, out=None, kind=None) -> dict:
    result = {"config": {"seeds": list(SEEDS), "error_rows": ERROR_ROWS, "max_rows": MAX_ROWS,
                         "components": list(components), "clock": "process",
                         "polynomial_sketch_kind": kind or "default",
                         "threads": "torch 1, BLAS 1", "dtype": "float64", "reps": reps,
                         "device": f"CPU ({platform.machine()})",
                         "load_average_1_5_15_min": os.getloadavg()},
              "rows": rows_out}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = out or ("vs_sklearn_quick.json" if quick else "vs_sklearn.json")
    (RESULTS / out).write_text(
        json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three data sets only")
    parser.add_argument("--only", help="only the maps whose name contains this string")
    parser.add_argument("--components", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--reps", type=int, default=1,
                        help="time the median of this many fits per seed (default: one)")
    parser.add_argument("--out", help="results file name in benchmarks/results/features/ "
                        "(default vs_sklearn.json, vs_sklearn_quick.json with --quick)")
    parser.add_argument("--kind", choices=["tensorsketch", "srht", "gaussian", "countsketch"],
                        help="PolynomialSketch's kind (default: its default)")
    args = parser.parse_args()
    if args.only and not args.out:
        parser.error("--only needs --out (a partial table must not replace vs_sklearn.json)")
    run(tuple(args.components), quick=args.quick, only=args.only, reps=args.reps, out=args.out,
        kind=args.kind)
