"""Kernel ridge regression on real offline regression data: sketched features vs exact KRR.

For each data set (standardised X and y, fixed 80/20 split) it fits exact kernel
ridge regression (scikit-learn ``KernelRidge``) and primal ridge regression on
``n_components`` random features (:class:`kernelsketch.features.KernelRidge`):

- Gaussian kernel ``exp(-gamma ||x-y||^2)``, ``gamma = 1 / (2 d)``: RFF
  (``RBFSampler``), uniform ``Nystroem``, ``RLSNystroem``, ``WeightedRandomBinning``
  (its own kernel is within 0.0015 per coordinate of this Gaussian),
  ``GegenbauerFeatures``;
- polynomial kernel ``(<x,y>/d + 1)^3``: ``PolynomialCountSketch`` (TensorSketch),
  ``PolynomialSketch``, ``PolynomialLeverageSampler``.

``alpha`` is chosen per data set and kernel by exact KRR on a hold-out part of the
training split (never the test split). Reported: test RMSE (in units of the
standard deviation of y), its ratio to exact KRR's, fit and predict wall time
(CPU, ``Stopwatch`` of :mod:`kernelsketch.bench.timing`), mean over ``SEEDS``
feature draws.

A second, small part (:func:`run_input_sparsity`) times
``PolynomialLeverageSampler`` on scipy sparse inputs: fit and transform time as the
number of columns grows (same data, columns relabelled) and as nnz grows, to check
the input-sparsity-time claim (time follows nnz, not n_features).

Run alone with
``python benchmarks/features/kernels_regression.py [--part regression|sparsity|all]``;
the dispatcher ``benchmarks/features/kernels.py`` calls :func:`run` (both parts). Writes
``benchmarks/results/features/kernels_regression{.json,.png,_sparsity.json}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.datasets import load_diabetes, make_friedman1
from sklearn.kernel_approximation import Nystroem, PolynomialCountSketch, RBFSampler
from sklearn.kernel_ridge import KernelRidge as ExactKernelRidge
from sklearn.model_selection import train_test_split

from kernelsketch.bench.timing import Stopwatch
from kernelsketch.features import (
    GegenbauerFeatures,
    KernelRidge,
    PolynomialLeverageSampler,
    PolynomialSketch,
    RLSNystroem,
    WeightedRandomBinning,
)

N_COMPONENTS = 512
SEEDS = (0, 1)
MAX_TRAIN = 3000  # exact KRR is O(n^3); the larger sets are subsampled to keep CPU time sane
ALPHAS = (0.01, 0.1, 1.0, 10.0)


def load_datasets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Offline regression sets: scikit-learn diabetes, statsmodels fair and randhie, Friedman #1."""
    data = {}
    X, y = load_diabetes(return_X_y=True)
    data["diabetes"] = (X, y)
    try:
        import statsmodels.api as sm

        fair = sm.datasets.fair.load_pandas()
        data["fair (affairs)"] = (fair.exog.to_numpy(float), fair.endog.to_numpy(float))
        rand = sm.datasets.randhie.load_pandas()
        data["randhie (mdvis)"] = (rand.exog.to_numpy(float), rand.endog.to_numpy(float))
    except ImportError:
        print("statsmodels not installed: skipping the fair and randhie data sets", file=sys.stderr)
    X, y = make_friedman1(n_samples=4000, noise=1.0, random_state=0)
    data["friedman1 (synthetic)"] = (X, y)
    return data


def _prepare(X, y, seed=0):
    rng = np.random.default_rng(seed)
    n_max = int(MAX_TRAIN / 0.8)
    if len(y) > n_max:
        keep = rng.choice(len(y), n_max, replace=False)
        X, y = X[keep], y[keep]
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=seed)
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-12
    ym, ys = ytr.mean(), ytr.std()
    return (Xtr - mu) / sd, (Xte - mu) / sd, (ytr - ym) / ys, (yte - ym) / ys


def _rmse(pred, y):
    return float(np.sqrt(np.mean((pred - y) ** 2)))


def _exact(kernel_kw, alpha, Xtr, ytr, Xte):
    with Stopwatch() as fit:
        model = ExactKernelRidge(alpha=alpha, **kernel_kw).fit(Xtr, ytr - ytr.mean())
    with Stopwatch() as predict:
        pred = model.predict(Xte) + ytr.mean()
    return pred, fit.seconds, predict.seconds


def _choose_alpha(kernel_kw, Xtr, ytr):
    """Hold-out (last 25% of the training split, at most 1500 points) selection of alpha."""
    n = min(len(ytr), 2000)
    cut = int(0.75 * n)
    best = min(
        ALPHAS,
        key=lambda a: _rmse(_exact(kernel_kw, a, Xtr[:cut], ytr[:cut], Xtr[cut:n])[0], ytr[cut:n]),
    )
    return best


def _methods(d: int, alpha: dict):
    gamma = 1.0 / (2 * d)
    ell = 1.0 / np.sqrt(2 * gamma)
    D = N_COMPONENTS
    gaussian = {
        "RFF (sklearn RBFSampler)": lambda s: RBFSampler(gamma=gamma, n_components=D, random_state=s),
        "Nystroem (sklearn, uniform)": lambda s: Nystroem(gamma=gamma, n_components=D, random_state=s),
        "RLSNystroem": lambda s: RLSNystroem(gamma=gamma, n_components=D, random_state=s),
        "WeightedRandomBinning": lambda s: WeightedRandomBinning(
            kernel="gaussian", length_scale=ell, n_components=D, random_state=s),
        # Lower variance per grid (E[f^4]^d: 1.43^d against 1.81^d) for a rougher kernel.
        "WeightedRandomBinning (weight_order=1)": lambda s: WeightedRandomBinning(
            kernel="gaussian", length_scale=ell, n_components=D, weight_order=1, random_state=s),
        "WeightedRandomBinning (weight_order=3)": lambda s: WeightedRandomBinning(
            kernel="gaussian", length_scale=ell, n_components=D, weight_order=3, random_state=s),
        "GegenbauerFeatures": lambda s: GegenbauerFeatures(
            kernel="gaussian", gamma=gamma, n_components=D, random_state=s),
    }
    poly_kw = {"degree": 3, "gamma": 1.0 / d, "coef0": 1.0}
    polynomial = {
        "TensorSketch (sklearn PolynomialCountSketch)": lambda s: PolynomialCountSketch(
            n_components=D, random_state=s, **poly_kw),
        "PolynomialSketch": lambda s: PolynomialSketch(n_components=D, random_state=s, **poly_kw),
        # Leverage scores at the ridge of the regression (the lambda of the guarantee).
        "PolynomialLeverageSampler": lambda s: PolynomialLeverageSampler(
            n_components=D, ridge=alpha["polynomial"], random_state=s, **poly_kw),
    }
    return [
        ("gaussian", {"kernel": "rbf", "gamma": gamma}, gaussian),
        ("polynomial", dict(kernel="poly", **poly_kw), polynomial),
    ]


def run(results_dir) -> dict:
    """Both parts: :func:`run_regression` and :func:`run_input_sparsity`."""
    result = run_regression(results_dir)
    result["input_sparsity"] = run_input_sparsity(results_dir)
    return result


# Input-sparsity part: n rows, each with NNZ_ROW non-zeros drawn from a vocabulary of
# VOCAB active columns (Zipf-like frequencies) placed at random among n_features.
SPARSE_N = 2000
SPARSE_VOCAB = 1000
SPARSE_DEGREE = 3
SPARSE_COMPONENTS = 256
SPARSE_SEEDS = (0, 1, 2)
# Rows on which Z Z^T is compared with the exact kernel, in the regularised spectral
# form at the sampler's ridge (a principal sub-block inherits the full guarantee).
SPARSE_CHECK_ROWS = 300


def _sparse_data(n_features: int, nnz_row: int, seed: int = 0):
    """CSR [SPARSE_N, n_features] and the same data on its vocabulary columns only."""
    rng = np.random.default_rng(seed)
    freq = 1.0 / (np.arange(SPARSE_VOCAB) + 10.0)
    slots = rng.choice(SPARSE_VOCAB, size=(SPARSE_N, nnz_row), p=freq / freq.sum())
    vals = rng.standard_normal(slots.shape) / np.sqrt(nnz_row)
    rows = np.repeat(np.arange(SPARSE_N), nnz_row)
    compact = sp.csr_matrix((vals.ravel(), (rows, slots.ravel())), shape=(SPARSE_N, SPARSE_VOCAB))
    # Vocabulary positions among n_features >= 10 * VOCAB (distinct, independent of the data).
    pos = np.unique(np.random.default_rng(seed + 1).integers(0, n_features, 2 * SPARSE_VOCAB))
    pos = np.random.default_rng(seed + 2).permutation(pos)[:SPARSE_VOCAB]
    X = sp.csr_matrix((vals.ravel(), (rows, pos[slots.ravel()])), shape=(SPARSE_N, n_features))
    return X, compact


def _spectral_eps(K, Kt, lam) -> float:
    """Smallest eps with (1 - eps)(K + lam I) <= Kt + lam I <= (1 + eps)(K + lam I)."""
    w, V = np.linalg.eigh(K + lam * np.eye(len(K)))
    inv_sqrt = (V / np.sqrt(w)) @ V.T
    ev = np.linalg.eigvalsh(inv_sqrt @ (Kt + lam * np.eye(len(K))) @ inv_sqrt)
    return float(max(ev.max() - 1.0, 1.0 - ev.min()))


def run_input_sparsity(results_dir) -> list[dict]:
    """Time PolynomialLeverageSampler on sparse X; write ``kernels_regression_sparsity.json``.

    Rows: growing n_features at fixed data (columns relabelled), growing nnz, and
    a larger ``n_components``; ``spectral_eps`` (one per seed) at the ridge
    ``trace(K) / 256`` on the first rows, next to the oblivious PolynomialSketch
    (TensorSketch nodes, on the vocabulary columns) of equal size. The printed table
    shows means over ``SPARSE_SEEDS``.
    """
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    configs = [(d, 8, SPARSE_COMPONENTS) for d in (10**4, 10**6, 10**8, 10**9)]
    configs += [(10**6, k, SPARSE_COMPONENTS) for k in (4, 16, 32)]
    configs += [(10**6, 8, 4 * SPARSE_COMPONENTS)]
    rows = []
    print(f"\nPolynomialLeverageSampler on sparse X: n={SPARSE_N}, degree={SPARSE_DEGREE}, "
          f"coef0=1, ridge=trace(K)/{SPARSE_COMPONENTS}")
    print(f"{'n_features':>10s} {'nnz/row':>7s} {'nnz':>6s} {'m':>5s} {'fit s':>6s} "
          f"{'transform s':>11s} {'spectral eps':>12s} {'PolySketch eps':>14s}")
    for n_features, nnz_row, m in configs:
        X, compact = _sparse_data(n_features, nnz_row)
        dense = compact.toarray()
        trace = float((((dense * dense).sum(1) + 1.0) ** SPARSE_DEGREE).sum())
        ridge = trace / SPARSE_COMPONENTS
        sub = dense[:SPARSE_CHECK_ROWS]
        K = (sub @ sub.T + 1.0) ** SPARSE_DEGREE
        fits, transforms, eps, eps_poly = [], [], [], []
        for seed in SPARSE_SEEDS:
            est = PolynomialLeverageSampler(n_components=m, degree=SPARSE_DEGREE, coef0=1.0,
                                            ridge=ridge, random_state=seed)
            with Stopwatch() as fit:
                est.fit(X)
            with Stopwatch() as transform:
                Z = est.transform(X)
            fits.append(fit.seconds)
            transforms.append(transform.seconds)
            Zs = Z[:SPARSE_CHECK_ROWS].toarray()
            eps.append(_spectral_eps(K, Zs @ Zs.T, ridge))
            # On the vocabulary columns: PolynomialSketch keeps O(n_features) hash buffers
            # per leaf (16 GB at 10^9 columns); same kernel, same feature distribution.
            Zp = PolynomialSketch(n_components=m, degree=SPARSE_DEGREE, coef0=1.0,
                                  kind="tensorsketch", random_state=seed).fit(compact)
            Zp = Zp.transform(compact[:SPARSE_CHECK_ROWS])
            eps_poly.append(_spectral_eps(K, Zp @ Zp.T, ridge))
        row = {"n_features": n_features, "nnz_per_row": nnz_row, "nnz": int(X.nnz),
               "n_components": m, "fit_s": float(np.mean(fits)),
               "transform_s": float(np.mean(transforms)), "ridge": ridge,
               "spectral_eps": eps, "polysketch_spectral_eps": eps_poly}
        rows.append(row)
        print(f"{n_features:10.0e} {nnz_row:7d} {X.nnz:6d} {m:5d} {row['fit_s']:6.2f} "
              f"{row['transform_s']:11.3f} {np.mean(eps):12.3f} {np.mean(eps_poly):14.3f}")
    out = {
        "config": {"n": SPARSE_N, "vocabulary": SPARSE_VOCAB, "degree": SPARSE_DEGREE,
                   "seeds": list(SPARSE_SEEDS),
                   "gamma": 1.0, "coef0": 1.0, "ridge": f"trace(K)/{SPARSE_COMPONENTS}",
                   "error_rows": SPARSE_CHECK_ROWS,
                   "device": f"CPU, torch threads={torch.get_num_threads()}"},
        "rows": rows,
    }
    (results_dir / "kernels_regression_sparsity.json").write_text(json.dumps(out, indent=2))
    return rows


def run_regression(results_dir) -> dict:
    """Run the regression benchmark, print the table, write JSON and PNG under ``results_dir``.

    Returns
    -------
    dict
        ``{"config": ..., "rows": [{dataset, n_train, d, kernel, method, alpha,
        test_rmse, rmse_ratio_vs_exact, fit_s, predict_s}, ...]}``.
    """
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (X, y) in load_datasets().items():
        Xtr, Xte, ytr, yte = _prepare(X, y)
        d = Xtr.shape[1]
        alphas: dict = {}
        for kernel, kernel_kw, methods in _methods(d, alphas):
            alpha = alphas[kernel] = _choose_alpha(kernel_kw, Xtr, ytr)
            pred, fit_s, pred_s = _exact(kernel_kw, alpha, Xtr, ytr, Xte)
            exact_rmse = _rmse(pred, yte)
            base = {"dataset": name, "n_train": len(ytr), "n_test": len(yte), "d": d, "kernel": kernel,
                        "alpha": alpha}
            rows.append(dict(base, method="exact KRR (sklearn)", test_rmse=exact_rmse,
                             rmse_ratio_vs_exact=1.0, fit_s=fit_s, predict_s=pred_s))
            for method, make in methods.items():
                rmse, fits, preds = [], [], []
                for seed in SEEDS:
                    with Stopwatch() as fit:
                        model = KernelRidge(make(seed), alpha=alpha).fit(Xtr, ytr)
                    with Stopwatch() as predict:
                        p = model.predict(Xte)
                    preds.append(predict.seconds)
                    fits.append(fit.seconds)
                    rmse.append(_rmse(p, yte))
                rows.append(dict(base, method=method, test_rmse=float(np.mean(rmse)),
                                 rmse_ratio_vs_exact=float(np.mean(rmse)) / exact_rmse,
                                 fit_s=float(np.mean(fits)), predict_s=float(np.mean(preds))))
            _print_rows([r for r in rows if r["dataset"] == name and r["kernel"] == kernel])
    result = {
        "config": {
            "n_components": N_COMPONENTS, "seeds": list(SEEDS), "max_train": MAX_TRAIN,
            "alphas": list(ALPHAS), "device": f"CPU ({platform.processor() or platform.machine()}), "
            f"torch threads={torch.get_num_threads()}", "dtype": "float64",
            "gaussian_gamma": "1/(2d)", "polynomial": "(<x,y>/d + 1)^3",
        },
        "rows": rows,
    }
    (results_dir / "kernels_regression.json").write_text(json.dumps(result, indent=2))
    _plot(rows, results_dir / "kernels_regression.png")
    return result


def _print_rows(rows):
    r0 = rows[0]
    print(f"\n{r0['dataset']}  n_train={r0['n_train']} d={r0['d']}  kernel={r0['kernel']}  "
          f"alpha={r0['alpha']}  features={N_COMPONENTS}")
    print(f"{'method':46s} {'test RMSE':>10s} {'vs exact':>9s} {'fit s':>8s} {'predict s':>10s}")
    for r in rows:
        print(f"{r['method']:46s} {r['test_rmse']:10.4f} {r['rmse_ratio_vs_exact']:9.3f} "
              f"{r['fit_s']:8.3f} {r['predict_s']:10.3f}")


def _plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(2, len(datasets), figsize=(4.2 * len(datasets), 7.5), squeeze=False)
    for j, name in enumerate(datasets):
        for i, kernel in enumerate(("gaussian", "polynomial")):
            ax = axes[i, j]
            for r in (r for r in rows if r["dataset"] == name and r["kernel"] == kernel):
                marker = "*" if r["method"].startswith("exact") else "o"
                ax.scatter(r["fit_s"], r["test_rmse"], marker=marker, s=80 if marker == "*" else 40,
                           label=r["method"], color=colors[r["method"]])
            ax.set_xscale("log")
            # Labelled ticks at 1, 2, 5 x 10^k: most panels span less than a decade.
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{name}\n{kernel} kernel", fontsize=9)
            ax.set_xlabel("fit time (s, CPU)")
            ax.set_ylabel("test RMSE (std of y)")
            ax.grid(alpha=0.3)
            if j == len(datasets) - 1:
                ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"Kernel ridge regression: {N_COMPONENTS} features vs exact", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("regression", "sparsity", "all"), default="all")
    args = parser.parse_args()
    out_dir = Path(__file__).resolve().parents[1] / "results" / "features"
    {"regression": run_regression, "sparsity": run_input_sparsity, "all": run}[args.part](out_dir)
