"""Neural-kernel feature maps on real offline data: sketched features vs exact kernels.

Two parts, all on CPU, single-threaded (torch and BLAS limited to one thread),
float64. Times are process CPU seconds (``Stopwatch("process")`` of
:mod:`kernelsketch.bench.timing`), which on one
thread measure the work done and stay comparable on a shared, loaded machine
where wall-clock times are not:

1. Kernel approximation: relative Frobenius error ||Z Z^T - K|| / ||K|| against
   the exact kernel as n_components grows, on 300 breast-cancer rows (NTK,
   GeLU) and 200 digit images (CNTK):
   NTKRandomFeatures and NTKSketch (ReLU NTK, depth 2, unit-norm rows),
   ActivationKernelSketch (GeLU dual, standardised rows / sqrt(d)), CNTKSketch
   (depth 1, 3x3 filters, 8x8 digits; pixel_dim = n_components / 4).
2. Learning: ridge regression / one-vs-all ridge classification on the
   features vs exact kernel ridge with the same kernel, and vs scikit-learn's
   RBFSampler / Nystroem (Gaussian kernel, gamma = 1/d) and exact RBF KRR.
   Data: breast cancer (classification), diabetes (regression), digits
   (classification; as 64-vectors for the NTK, as 8x8 images for the CNTK,
   the exact CNTK on a 300 + 150 image subset). Fixed 70/30 split. The ridge
   parameter is chosen on the training split only, by exact leave-one-out of
   each method's own Gram matrix (not timed). Reported: test accuracy (R^2
   for diabetes), feature time (fit + transform of train and test), total
   time (features + ridge solve + predict) and the speed-up of that total
   over the exact kernel's (kernel matrices + solve + predict).

Run alone with ``python benchmarks/features/kernels_neural.py``; the dispatcher
``benchmarks/features/kernels.py --section neural`` calls :func:`run`. Writes
``benchmarks/results/features/kernels_neural.{json,png}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.kernel_approximation import Nystroem, RBFSampler
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from kernelsketch.bench.timing import Stopwatch
from kernelsketch.features import (
    ActivationKernelSketch,
    CNTKSketch,
    NTKRandomFeatures,
    NTKSketch,
    cntk_relu,
    dual_activation,
    ntk_relu,
)

ALPHAS = np.logspace(-4, 2, 13)
N_COMPONENTS = 1024
APPROX_SIZES = (64, 256, 1024)
APPROX_SEEDS = (0, 1, 2)
N_CNTK_APPROX = 200  # images for the exact CNTK in part 1 (O(n^2 (HW)^2) time)
N_CNTK_TRAIN, N_CNTK_TEST = 300, 150  # exact-CNTK subset in part 2
NTK_DEPTH = 2
SEED = 0


# ----------------------------------------------------------------------------- data


def _unit(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def load_datasets():
    """name -> (X_vectors, y, task, images or None); X standardised, NTK inputs unit-norm later."""
    out = {}
    bc = load_breast_cancer()
    out["breast_cancer"] = (
        StandardScaler().fit_transform(bc.data),
        bc.target,
        "classification",
        None,
    )
    db = load_diabetes()
    y = (db.target - db.target.mean()) / db.target.std()
    out["diabetes"] = (StandardScaler().fit_transform(db.data), y, "regression", None)
    dg = load_digits()
    images = dg.images[:, None] / 16.0  # [n, 1, 8, 8] in [0, 1]
    out["digits"] = (StandardScaler().fit_transform(dg.data), dg.target, "classification", images)
    return out


def _targets(y, task):
    if task == "regression":
        return y[:, None].astype(np.float64)
    classes = np.unique(y)
    return np.where(y[:, None] == classes[None, :], 1.0, -1.0)


def _score(pred, y, task):
    if task == "regression":
        return 1.0 - np.mean((pred[:, 0] - y) ** 2) / np.var(y)
    return float(np.mean(np.argmax(pred, axis=1) == np.searchsorted(np.unique(y), y)))


# ----------------------------------------------------------------------------- ridge


def _loo_alpha(K, T):
    """Ridge parameter minimising the exact leave-one-out error of kernel ridge on Gram K."""
    lam, V = np.linalg.eigh(K)
    lam = np.clip(lam, 0, None)
    VT = V.T @ T
    best, best_err = ALPHAS[0], np.inf
    for a in ALPHAS * np.mean(np.diag(K)):
        shrink = lam / (lam + a)
        H_diag = np.einsum("ij,j,ij->i", V, shrink, V)
        resid = (T - V @ (shrink[:, None] * VT)) / (1 - H_diag)[:, None]
        err = np.mean(resid**2)
        if err < best_err:
            best, best_err = a, err
    return best


def _exact_krr(kernel, Xtr, Ttr, Xte):
    """Exact kernel ridge: returns (pred, seconds, alpha); alpha selection (LOO) is not timed."""
    with Stopwatch("process") as t_kernel:
        Ktr = kernel(Xtr, Xtr)
    alpha = _loo_alpha(Ktr, Ttr)
    with Stopwatch("process") as t_solve:
        coef = np.linalg.solve(Ktr + alpha * np.eye(len(Ktr)), Ttr)
        pred = kernel(Xte, Xtr) @ coef
    return pred, t_kernel.seconds + t_solve.seconds, alpha


def _feature_ridge(estimator, Xtr, Ttr, Xte):
    """Primal ridge on features: returns (pred, feature seconds, total seconds)."""
    with Stopwatch("process") as t_feat:
        est = estimator.fit(Xtr)
        Ztr, Zte = est.transform(Xtr), est.transform(Xte)
    alpha = _loo_alpha(Ztr @ Ztr.T, Ttr)  # selection on the training split, not timed
    with Stopwatch("process") as t_solve:
        p = Ztr.shape[1]
        w = np.linalg.solve(Ztr.T @ Ztr + alpha * np.eye(p), Ztr.T @ Ttr)
        pred = Zte @ w
    return pred, t_feat.seconds, t_feat.seconds + t_solve.seconds


# ----------------------------------------------------------------------------- part 1


def _rel_fro(Z, K):
    return float(np.linalg.norm(Z @ Z.T - K) / np.linalg.norm(K))


def approximation(data) -> list[dict]:
    rng = np.random.default_rng(SEED)
    rows = []
    X = data["breast_cancer"][0][rng.choice(569, 300, replace=False)]
    Xu = _unit(X)
    K_ntk = ntk_relu(Xu, depth=NTK_DEPTH)
    Xg = X / np.sqrt(X.shape[1])
    K_gelu = dual_activation("gelu", Xg)
    images = data["digits"][3][rng.choice(1797, N_CNTK_APPROX, replace=False)]
    K_cntk = cntk_relu(images, depth=1)
    flat = images.reshape(N_CNTK_APPROX, -1)
    for m in APPROX_SIZES:
        for seed in APPROX_SEEDS:
            cases = {
                "NTKRandomFeatures": (
                    NTKRandomFeatures(depth=NTK_DEPTH, n_components=m, random_state=seed),
                    Xu,
                    K_ntk,
                ),
                "NTKSketch": (
                    NTKSketch(depth=NTK_DEPTH, n_components=m, random_state=seed),
                    Xu,
                    K_ntk,
                ),
                "ActivationKernelSketch(gelu)": (
                    ActivationKernelSketch(activation="gelu", n_components=m, random_state=seed),
                    Xg,
                    K_gelu,
                ),
                "CNTKSketch": (
                    CNTKSketch(
                        n_components=m, pixel_dim=m // 4, image_shape=(1, 8, 8), random_state=seed
                    ),
                    flat,
                    K_cntk,
                ),
            }
            for name, (est, Xin, K) in cases.items():
                print(f"  approximation: {name}, m={m}, seed={seed}", flush=True)
                with Stopwatch("process") as watch:
                    Z = est.fit_transform(Xin)
                rows.append(
                    {
                        "method": name,
                        "n_components": m,
                        "seed": seed,
                        "rel_fro_error": _rel_fro(Z, K),
                        "seconds": watch.seconds,
                        "n": len(Xin),
                    }
                )
    return rows


# ----------------------------------------------------------------------------- part 2


def _ntk_kernel(A, B):
    return ntk_relu(A, B, depth=NTK_DEPTH)


def learning(data) -> list[dict]:
    rows = []
    for name, (X, y, task, images) in data.items():
        idx_tr, idx_te = train_test_split(
            np.arange(len(y)),
            test_size=0.3,
            random_state=SEED,
            stratify=y if task == "classification" else None,
        )
        print(f"  learning: {name}", flush=True)
        T = _targets(y, task)
        d = X.shape[1]
        Xu = _unit(X)
        gamma = 1.0 / d

        def rbf(A, B, gamma=gamma):
            return rbf_kernel(A, B, gamma=gamma)

        def add(method, kernel, score, t_feat, t_total, t_exact, n_train, name=name, task=task):
            rows.append(
                {
                    "dataset": name,
                    "task": task,
                    "method": method,
                    "kernel": kernel,
                    "score": score,
                    "feature_seconds": t_feat,
                    "total_seconds": t_total,
                    "exact_seconds": t_exact,
                    "speedup": t_exact / t_total if t_exact else None,
                    "n_train": n_train,
                    "n_components": None if t_feat is None else N_COMPONENTS,
                }
            )

        n_tr = len(idx_tr)
        # ReLU NTK, depth 2.
        pred, t_ntk, _ = _exact_krr(_ntk_kernel, Xu[idx_tr], T[idx_tr], Xu[idx_te])
        add("exact NTK", "ntk", _score(pred, y[idx_te], task), None, t_ntk, t_ntk, n_tr)
        for method, est in (
            (
                "NTKRandomFeatures",
                NTKRandomFeatures(depth=NTK_DEPTH, n_components=N_COMPONENTS, random_state=SEED),
            ),
            (
                "NTKSketch",
                NTKSketch(depth=NTK_DEPTH, n_components=N_COMPONENTS, random_state=SEED),
            ),
        ):
            pred, tf, tt = _feature_ridge(est, Xu[idx_tr], T[idx_tr], Xu[idx_te])
            add(method, "ntk", _score(pred, y[idx_te], task), tf, tt, t_ntk, n_tr)
        # Gaussian kernel baselines.
        pred, t_rbf, _ = _exact_krr(rbf, X[idx_tr], T[idx_tr], X[idx_te])
        add("exact RBF", "rbf", _score(pred, y[idx_te], task), None, t_rbf, t_rbf, n_tr)
        n_nys = min(N_COMPONENTS, n_tr)
        for method, est in (
            (
                "sklearn RBFSampler",
                RBFSampler(gamma=gamma, n_components=N_COMPONENTS, random_state=SEED),
            ),
            (
                f"sklearn Nystroem({n_nys})",
                Nystroem(gamma=gamma, n_components=n_nys, random_state=SEED),
            ),
        ):
            pred, tf, tt = _feature_ridge(est, X[idx_tr], T[idx_tr], X[idx_te])
            add(method, "rbf", _score(pred, y[idx_te], task), tf, tt, t_rbf, n_tr)
        if images is None:
            continue
        # CNTK (depth 1, 3x3, GAP): exact on a subset; the sketch on it and on all images.
        flat = images.reshape(len(images), -1)
        sub = np.random.default_rng(SEED).choice(idx_tr, N_CNTK_TRAIN, replace=False)
        sub_te = np.random.default_rng(SEED).choice(idx_te, N_CNTK_TEST, replace=False)

        def cntk(A, B):
            return cntk_relu(A.reshape(-1, 1, 8, 8), B.reshape(-1, 1, 8, 8), depth=1)

        pred, t_cntk, _ = _exact_krr(cntk, flat[sub], T[sub], flat[sub_te])
        add(
            "exact CNTK (subset)",
            "cntk",
            _score(pred, y[sub_te], task),
            None,
            t_cntk,
            t_cntk,
            N_CNTK_TRAIN,
        )

        def make_cntk():
            return CNTKSketch(
                n_components=N_COMPONENTS, pixel_dim=256, image_shape=(1, 8, 8), random_state=SEED
            )

        pred, tf, tt = _feature_ridge(make_cntk(), flat[sub], T[sub], flat[sub_te])
        add(
            "CNTKSketch (subset)",
            "cntk",
            _score(pred, y[sub_te], task),
            tf,
            tt,
            t_cntk,
            N_CNTK_TRAIN,
        )
        pred, tf, tt = _feature_ridge(make_cntk(), flat[idx_tr], T[idx_tr], flat[idx_te])
        add("CNTKSketch (all)", "cntk", _score(pred, y[idx_te], task), tf, tt, None, n_tr)
    return rows


# ----------------------------------------------------------------------------- output


def _print(approx, learn):
    print(
        "\nKernel approximation (300 rows; CNTK: 200 images), relative Frobenius error of Z Z^T,"
        f" mean±std over seeds {APPROX_SEEDS}"
    )
    print(f"{'method':<30}" + "".join(f"{m:>14}" for m in APPROX_SIZES))
    for method in dict.fromkeys(r["method"] for r in approx):
        cells = []
        for m in APPROX_SIZES:
            e = [
                r["rel_fro_error"]
                for r in approx
                if r["method"] == method and r["n_components"] == m
            ]
            cells.append(f"{np.mean(e):.3f}±{np.std(e):.3f}")
        print(f"{method:<30}" + "".join(f"{c:>14}" for c in cells))
    print(f"\nLearning ({N_COMPONENTS} features; score = accuracy, R^2 for diabetes)")
    print(f"{'dataset':<14}{'method':<26}{'score':>8}{'feat s':>9}{'total s':>9}{'speed-up':>9}")
    print("(CPU seconds, one thread; speed-up = exact kernel's total / method's total)")
    for r in learn:
        feat = "-" if r["feature_seconds"] is None else f"{r['feature_seconds']:.3f}"
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        print(
            f"{r['dataset']:<14}{r['method']:<26}{r['score']:>8.3f}{feat:>9}{r['total_seconds']:>9.3f}{sp:>9}"
        )


def _plot(approx, learn, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    for method in dict.fromkeys(r["method"] for r in approx):
        means = [
            np.mean(
                [
                    r["rel_fro_error"]
                    for r in approx
                    if r["method"] == method and r["n_components"] == m
                ]
            )
            for m in APPROX_SIZES
        ]
        ax.loglog(APPROX_SIZES, means, "o-", label=method)
    ms = np.array(APPROX_SIZES, dtype=float)
    ax.loglog(ms, 2.0 / np.sqrt(ms), "k:", label="2/sqrt(m)")
    ax.set_xlabel("n_components m")
    ax.set_ylabel("||ZZ^T - K||_F / ||K||_F")
    ax.set_title("Kernel approximation (300 rows; CNTK 200 images)")
    ax.legend(fontsize=7)
    ax = axes[1]
    datasets = list(dict.fromkeys(r["dataset"] for r in learn))
    methods = list(dict.fromkeys(r["method"] for r in learn))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        vals = [
            next(
                (r["score"] for r in learn if r["dataset"] == ds and r["method"] == method), np.nan
            )
            for ds in datasets
        ]
        ax.bar(np.arange(len(datasets)) + i * width, vals, width, label=method)
    ax.set_xticks(np.arange(len(datasets)) + 0.4 - width / 2)
    ax.set_xticklabels(datasets)
    ax.set_ylabel("test accuracy (R^2 for diabetes)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Ridge on {N_COMPONENTS} features vs exact kernels")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(results_dir) -> dict:
    """Run both parts, print tables, write kernels_neural.json/.png to ``results_dir``."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            data = load_datasets()
            approx = approximation(data)
            learn = learning(data)
    finally:
        torch.set_num_threads(threads)
    _print(approx, learn)
    out = {
        "device": f"CPU ({platform.processor() or platform.machine()}), 1 thread, float64",
        "timing": "process CPU seconds (bench.timing.Stopwatch('process')), one thread",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "ntk_depth": NTK_DEPTH,
        "n_components": N_COMPONENTS,
        "approximation": approx,
        "learning": learn,
    }
    (results_dir / "kernels_neural.json").write_text(json.dumps(out, indent=2, default=float))
    _plot(approx, learn, results_dir / "kernels_neural.png")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path,
                        default=Path(__file__).resolve().parents[1] / "results" / "features")
    run(parser.parse_args().results_dir)
