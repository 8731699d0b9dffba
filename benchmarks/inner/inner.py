"""Inner-product sketches: error vs storage, join-correlation on real tables, throughput.

Reproduces the experiment design of Bessa et al. (PODS 2023, Fig. 3) and
Daliri et al. (VLDB 2024, Figs. 3 and 8):

1. synthetic sparse vector pairs (length 20,000, 2,500 nonzeros each, 10% of
   the entries outliers x10, shared entries correlated 0.7) with controlled
   support overlap; error |est - <a,b>| / (||a|| ||b||) averaged over trials,
   vs storage 200..2000 words;
2. join-correlation estimation between keyed numeric columns of real tables
   shipped offline with statsmodels and vega_datasets (monthly / quarterly
   stock prices, US employment, US macro data, Mauna Loa CO2; hourly Seattle
   and San Francisco temperatures; yearly sunspots, Nile flow, wheat prices,
   driving); all cross-table column pairs whose join has >= 10 rows; one
   sketch per column; mean |r_est - r| vs storage per column;
3. sketching throughput (vectors/s and nonzeros/s).

Usage: python benchmarks/inner/inner.py [--quick]
Writes benchmarks/results/inner/inner.json and inner.png (``--quick``: inner_quick.*).
Times: wall clock, ``Stopwatch`` of :mod:`kernelsketch.bench.timing`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
from pathlib import Path

import numpy as np

from kernelsketch.bench.timing import Stopwatch
from kernelsketch.inner import METHODS, Sketcher, exact_join_statistics, join_statistics
from kernelsketch.inner.join import sketch_column

RESULTS = Path(__file__).resolve().parents[1] / "results" / "inner"
LABELS = {
    "wmh": "WMH",
    "jl": "JL",
    "cs": "CountSketch",
    "mh": "MH",
    "ts": "Threshold",
    "ps": "Priority",
}


# ---------------------------------------------------------------- synthetic
N, NNZ = 20_000, 2_500


def synthetic_pair(rng, n=N, nnz=NNZ, overlap=0.1, corr=0.7, outliers=0.1, scale=10.0):
    """Sparse pair with round(overlap * nnz) shared nonzeros (Daliri et al. §6.1 design)."""
    shared = round(overlap * nnz)
    idx = rng.permutation(n)[: 2 * nnz - shared]
    ia, ib = idx[:nnz], np.concatenate([idx[:shared], idx[nnz:]])
    a, b = np.zeros(n), np.zeros(n)
    a[ia], b[ib] = rng.normal(size=nnz), rng.normal(size=nnz)
    b[idx[:shared]] = corr * a[idx[:shared]] + math.sqrt(1 - corr**2) * b[idx[:shared]]
    for v, supp in ((a, ia), (b, ib)):
        v[supp[rng.random(nnz) < outliers]] *= scale
    return a, b


def run_synthetic(overlaps, sizes, trials):
    out = {}
    for ov in overlaps:
        rng = np.random.default_rng(1000 + int(ov * 1000))
        err = {m: np.zeros((trials, len(sizes))) for m in METHODS}
        for t in range(trials):
            a, b = synthetic_pair(rng, overlap=ov)
            truth, scale = a @ b, np.linalg.norm(a) * np.linalg.norm(b)
            for m in METHODS:
                for j, size in enumerate(sizes):
                    sk = Sketcher(m, size, seed=t)
                    err[m][t, j] = abs(sk.sketch(a).inner_product(sk.sketch(b)) - truth) / scale
        out[str(ov)] = {m: err[m].mean(axis=0).tolist() for m in METHODS}
        print(f"\noverlap {ov:.2f}: mean |est - <a,b>| / (||a|| ||b||) over {trials} pairs")
        print("  size " + "".join(f"{LABELS[m]:>12}" for m in METHODS))
        for j, size in enumerate(sizes):
            print(f"  {size:4d} " + "".join(f"{out[str(ov)][m][j]:12.4f}" for m in METHODS))
    return out


# --------------------------------------------------------------- real tables
def load_lake():
    """Keyed numeric columns of offline real tables: {table: (keys datetime64, {col: values})}."""
    import pandas as pd
    import statsmodels.api as sm
    from vega_datasets import local_data as vega

    lake = {}
    stocks = vega.stocks()
    for sym, g in stocks.groupby("symbol"):
        lake[f"stock_{sym}"] = (g["date"].to_numpy(), {"price": g["price"].to_numpy()})
    emp = vega.us_employment()
    lake["us_employment"] = (
        emp["month"].to_numpy(),
        {
            c: emp[c].to_numpy(float)
            for c in emp.columns
            if c != "month" and emp[c].dtype.kind in "if"
        },
    )
    macro = sm.datasets.macrodata.load_pandas().data
    q_start = pd.to_datetime(
        {"year": macro.year.astype(int), "month": 3 * macro.quarter.astype(int) - 2, "day": 1}
    )
    lake["us_macro"] = (
        q_start.to_numpy(),
        {c: macro[c].to_numpy(float) for c in macro.columns if c not in ("year", "quarter")},
    )
    co2 = sm.datasets.co2.load_pandas().data.dropna()
    # weekly readings keyed by their month: duplicates are averaged (duplicates="mean")
    lake["co2_weekly"] = (
        co2.index.to_period("M").to_timestamp().to_numpy(),
        {"co2": co2.co2.to_numpy()},
    )
    for name in ("seattle_temps", "sf_temps"):
        t = getattr(vega, name)()
        lake[name] = (t["date"].to_numpy(), {"temp": t["temp"].to_numpy(float)})

    def yearly(years):
        return pd.to_datetime({"year": np.asarray(years, int), "month": 1, "day": 1}).to_numpy()

    sun = sm.datasets.sunspots.load_pandas().data
    lake["sunspots"] = (yearly(sun.YEAR), {"activity": sun.SUNACTIVITY.to_numpy(float)})
    nile = sm.datasets.nile.load_pandas().data
    lake["nile"] = (yearly(nile.year), {"volume": nile.volume.to_numpy(float)})
    wheat = vega.wheat().dropna()
    lake["wheat"] = (
        yearly(wheat.year),
        {"wheat": wheat.wheat.to_numpy(float), "wages": wheat.wages.to_numpy(float)},
    )
    driving = vega.driving()
    lake["driving"] = (
        yearly(driving.year),
        {"miles": driving.miles.to_numpy(float), "gas": driving.gas.to_numpy(float)},
    )
    return lake


def run_join(sizes, seeds, min_join=10):
    lake = load_lake()
    columns = [(t, c) for t, (_, cols) in lake.items() for c in cols]
    pairs = []
    for (ta, ca), (tb, cb) in itertools.combinations(columns, 2):
        if ta == tb:
            continue
        ka, kb = lake[ta][0], lake[tb][0]
        ref = exact_join_statistics(ka, lake[ta][1][ca], kb, lake[tb][1][cb], duplicates="mean")
        if ref.size >= min_join and np.isfinite(ref.correlation):
            pairs.append(((ta, ca), (tb, cb), ref.correlation, ref.size))
    print(
        f"\njoin correlation: {len(columns)} columns from {len(lake)} tables, {len(pairs)} "
        f"cross-table pairs with >= {min_join} joined rows "
        f"(join sizes {min(p[3] for p in pairs):.0f}..{max(p[3] for p in pairs):.0f})"
    )
    out = {m: [] for m in METHODS}
    for m in METHODS:
        for size in sizes:
            errs = []
            for seed in seeds:
                sk = {
                    (t, c): sketch_column(
                        lake[t][0], lake[t][1][c], size=size, method=m, seed=seed, duplicates="mean"
                    )
                    for t, c in columns
                }
                for col_a, col_b, r, _ in pairs:
                    est = join_statistics(sk[col_a], sk[col_b]).correlation
                    errs.append(abs((0.0 if math.isnan(est) else est) - r))
            out[m].append(float(np.mean(errs)))
    print("  mean |r_est - r| over pairs and seeds; size = words per column sketch")
    print("  size " + "".join(f"{LABELS[m]:>12}" for m in METHODS))
    for j, size in enumerate(sizes):
        print(f"  {size:4d} " + "".join(f"{out[m][j]:12.4f}" for m in METHODS))
    tables = sorted(lake)
    return {"errors": out, "pairs": len(pairs), "columns": len(columns), "tables": tables}


# -------------------------------------------------------------- throughput
def run_throughput(size=1000, n=100_000, nnz=1_000, reps=20):
    rng = np.random.default_rng(5)
    vectors = []
    for _ in range(reps):
        idx = rng.choice(n, nnz, replace=False)
        vectors.append((idx, rng.normal(size=nnz)))
    out = {}
    print(f"\nthroughput: sparse vectors with {nnz} nonzeros (keys < {n}), size={size}")
    print("  method    vectors/s      nnz/s")
    for m in METHODS:
        sk = Sketcher(m, size, 1)
        sk.sketch(vectors[0])
        with Stopwatch() as watch:
            for v in vectors:
                sk.sketch(v)
        dt = watch.seconds
        out[m] = {"vectors_per_s": reps / dt, "nnz_per_s": reps * nnz / dt}
        print(f"  {LABELS[m]:<11}{reps / dt:9.1f}{reps * nnz / dt:11.3g}")
    return out


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    syn = result["synthetic"]
    fig, axes = plt.subplots(1, len(syn) + 1, figsize=(4 * (len(syn) + 1), 3.6))
    for ax, (ov, errs) in zip(axes, syn.items()):
        for m in METHODS:
            ax.plot(result["config"]["sizes"], errs[m], marker="o", ms=3, label=LABELS[m])
        ax.set(
            title=f"synthetic, overlap {float(ov):.0%}",
            xlabel="storage (words)",
            ylabel="|est - <a,b>| / (||a|| ||b||)",
            yscale="log",
            ylim=(1e-5, 0.5),
        )
    ax = axes[-1]
    for m in METHODS:
        ax.plot(
            result["config"]["join_sizes"],
            result["join"]["errors"][m],
            marker="o",
            ms=3,
            label=LABELS[m],
        )
    ax.set(
        title=f"real tables, {result['join']['pairs']} joins",
        xlabel="storage per column (words)",
        ylabel="mean |r_est - r|",
        yscale="log",
        ylim=(1e-5, 1.0),
    )
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny run to smoke-test the script")
    args = ap.parse_args()
    if args.quick:
        overlaps, sizes, trials = [0.01, 1.0], [200, 1000], 2
        join_sizes, seeds, reps = [150, 600], [0], 3
    else:
        overlaps, sizes, trials = [0.01, 0.1, 0.5, 1.0], list(range(200, 2001, 200)), 5
        join_sizes, seeds, reps = [150, 300, 600, 1200, 2400], [0, 1, 2], 20
    watch = Stopwatch().start()
    result = {
        "config": {
            "overlaps": overlaps,
            "sizes": sizes,
            "trials": trials,
            "n": N,
            "nnz": NNZ,
            "join_sizes": join_sizes,
            "join_seeds": seeds,
        },
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
        "numpy float64",
        "load_average_at_start": os.getloadavg(),
        "synthetic": run_synthetic(overlaps, sizes, trials),
        "join": run_join(join_sizes, seeds),
        "throughput": run_throughput(reps=reps),
    }
    result["wall_s"] = watch.stop()
    result["load_average_at_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (RESULTS / f"inner{suffix}.json").write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / f"inner{suffix}.png")
    print(f"\nwrote {RESULTS / f'inner{suffix}.json'} and .png in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
