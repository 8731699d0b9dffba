"""Neural-kernel feature maps on real offline data: sketches vs exact kernels, any activation.

All on CPU, torch and BLAS on one thread, float64; times are process CPU seconds
(``Stopwatch("process")`` of :mod:`kernelsketch.bench.timing`), which on one
thread measure the work done and stay comparable on a shared, loaded machine.
Parts (``--part``, default all but ``scale`` and ``cntk``):

1. ``approximation``: relative Frobenius error ||Z Z^T - K|| / ||K|| against
   :func:`~kernelsketch.features.neural_kernel` and the feature time, as
   n_components grows, on 300 breast-cancer rows (standardised): the ReLU NTK
   (depth 2, weight_std sqrt(2)) by NTKRandomFeatures, NTKSketch and
   ActivationKernelSketch; the erf NTK with bias (depth 2, weight_std 1.3,
   bias_std 0.1) by NTKRandomFeatures and ActivationKernelSketch; the depth-1
   ReLU CNTK (:func:`~kernelsketch.features.conv_neural_kernel`) of 200 digit
   images by CNTKSketch (pixel_dim = n_components / 4).
   Each row carries its peer of the same run: NTKRandomFeatures for the
   fully connected maps, the exact CNTK for CNTKSketch (error ratio, time ratio).
2. ``learning``: ridge regression / one-vs-all ridge classification on 1024
   features vs exact kernel ridge with the same kernel (ReLU NTK, depth 2),
   and scikit-learn's RBFSampler / Nystroem vs exact RBF KRR. Breast cancer,
   diabetes, digits; fixed 70/30 split; the ridge chosen on the training split
   by exact leave-one-out of each method's own Gram (not timed). Score: test
   accuracy (R^2 for diabetes); total = features + solve + predict; speed-up =
   the exact kernel's total / the method's.
3. ``activations``: the same learning task with the NTK of tanh, erf and GeLU
   networks (depth 2, weight_std 1.3, bias_std 0.1): exact (neural_kernel;
   tanh by its Hermite series) vs NTKRandomFeatures and ActivationKernelSketch
   (1024 features): score, kernel error on the training Gram, time, speed-up.
4. ``scale`` (minutes): the NTK headline at the largest shipped regression
   set, statsmodels randhie (log(1 + mdvis) on 9 standardised covariates),
   8000 training / 3429 test rows: exact NTK kernel ridge (Gram in row blocks,
   Cholesky solve; O(n^2 d + n^3)) of ReLU (depth 2) and GeLU (depth 2, weight
   and bias variances) networks vs NTKRandomFeatures, NTKSketch (ReLU) and
   ActivationKernelSketch (GeLU) at 1024 features, and the baseline a user
   would pick (exact RBF, RBFSampler, Nystroem at 1024), all in one run. The
   ridge is chosen by leave-one-out on 2000 training rows (not timed); the
   kernel error is measured on those 2000 rows.
5. ``cntk`` (minutes): the CNTK headline of arXiv 2106.07880 on the digits
   images (8x8; ``--cntk-images`` of the 1797, default N_CNTK_IMAGES, drawn
   with a fixed seed, split 70 / 30; the exact CNTK of all 1797 costs ~4 CPU
   minutes), exact CNTK (depth 1, 3x3, GAP; O(n^2 (HW)^2) time, memory
   bounded by its tiles) vs CNTKSketch at 1024 and 4096 features, and the
   baseline a user would pick on the same pixels (exact RBF, RBFSampler at
   4096, Nystroem at 1024): accuracy and time side by side.

Run with ``python benchmarks/features/kernels_neural.py [--part ...]``; the
dispatcher ``benchmarks/features/kernels.py --section neural`` calls :func:`run`.
Writes ``benchmarks/results/features/kernels_neural[_<part>].json`` (the cntk
part with ``--cntk-images`` other than the default: ``kernels_neural_cntk_<n>.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np
import scipy.linalg
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
    conv_neural_kernel,
    neural_kernel,
)

ALPHAS = np.logspace(-4, 2, 13)
N_COMPONENTS = 1024
APPROX_SIZES = (256, 1024, 4096)
APPROX_SEEDS = (0, 1, 2)
N_CNTK_APPROX = 200
RELU = {"activation": "relu", "depth": 2, "weight_std": math.sqrt(2.0)}
SMOOTH = {"depth": 2, "weight_std": 1.3, "bias_std": 0.1}
SEED = 0
PARTS = ("approximation", "learning", "activations", "scale", "cntk")
N_SCALE_TRAIN, N_SCALE_LOO, SCALE_BLOCK = 8000, 2000, 1000
N_CNTK_IMAGES = 450


# ----------------------------------------------------------------------------- data


def load_datasets():
    """name -> (X standardised, y, task, images or None)."""
    out = {}
    bc = load_breast_cancer()
    out["breast_cancer"] = (StandardScaler().fit_transform(bc.data), bc.target, "classification",
                            None)
    db = load_diabetes()
    y = (db.target - db.target.mean()) / db.target.std()
    out["diabetes"] = (StandardScaler().fit_transform(db.data), y, "regression", None)
    dg = load_digits()
    out["digits"] = (StandardScaler().fit_transform(dg.data), dg.target, "classification",
                     dg.images[:, None] / 16.0)
    return out


def _split(y, task):
    return train_test_split(np.arange(len(y)), test_size=0.3, random_state=SEED,
                            stratify=y if task == "classification" else None)


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
        err = np.mean(((T - V @ (shrink[:, None] * VT)) / (1 - H_diag)[:, None]) ** 2)
        if err < best_err:
            best, best_err = a, err
    return best


def _exact_krr(kernel, Xtr, Ttr, Xte):
    """Exact kernel ridge: (pred, seconds, train Gram); alpha selection (LOO) is not timed."""
    with Stopwatch("process") as t_kernel:
        Ktr = kernel(Xtr, Xtr)
    alpha = _loo_alpha(Ktr, Ttr)
    with Stopwatch("process") as t_solve:
        coef = scipy.linalg.solve(Ktr + alpha * np.eye(len(Ktr)), Ttr, assume_a="pos")
        pred = kernel(Xte, Xtr) @ coef
    return pred, t_kernel.seconds + t_solve.seconds, Ktr


def _feature_ridge(estimator, Xtr, Ttr, Xte):
    """Primal ridge on features: (pred, feature seconds, total seconds, Ztr)."""
    with Stopwatch("process") as t_feat:
        est = estimator.fit(Xtr)
        Ztr, Zte = est.transform(Xtr), est.transform(Xte)
    alpha = _loo_alpha(Ztr @ Ztr.T, Ttr)
    with Stopwatch("process") as t_solve:
        w = scipy.linalg.solve(Ztr.T @ Ztr + alpha * np.eye(Ztr.shape[1]), Ztr.T @ Ttr,
                               assume_a="pos")
        pred = Zte @ w
    return pred, t_feat.seconds, t_feat.seconds + t_solve.seconds, Ztr


def _rel_fro(Z, K):
    return float(np.linalg.norm(Z @ Z.T - K) / np.linalg.norm(K))


# ----------------------------------------------------------------------------- part 1


def approximation(data) -> list[dict]:
    rng = np.random.default_rng(SEED)
    X = data["breast_cancer"][0][rng.choice(569, 300, replace=False)]
    images = data["digits"][3][rng.choice(1797, N_CNTK_APPROX, replace=False)]
    flat = images.reshape(N_CNTK_APPROX, -1)
    with Stopwatch("process") as t_exact_cntk:
        K_cntk = conv_neural_kernel(images, depth=1)
    targets = {
        "relu NTK": (neural_kernel(X, **RELU), RELU,
                     ("NTKRandomFeatures", "NTKSketch", "ActivationKernelSketch")),
        "erf NTK": (neural_kernel(X, activation="erf", **SMOOTH), {"activation": "erf", **SMOOTH},
                    ("NTKRandomFeatures", "ActivationKernelSketch")),
    }
    classes = {"NTKRandomFeatures": NTKRandomFeatures, "NTKSketch": NTKSketch,
               "ActivationKernelSketch": ActivationKernelSketch}
    for name, cls in classes.items():  # warm-up (first-call costs), not timed
        cls(n_components=64, random_state=0, kernel="ntk", **RELU).fit_transform(X[:8])
    CNTKSketch(n_components=64, pixel_dim=16, image_shape=(1, 8, 8)).fit_transform(flat[:8])
    rows = []
    for m in APPROX_SIZES:
        for seed in APPROX_SEEDS:
            for kernel_name, (K, kw, methods) in targets.items():
                found = {}
                for name in methods:
                    est = classes[name](n_components=m, random_state=seed, kernel="ntk", **kw)
                    with Stopwatch("process") as watch:
                        Z = est.fit_transform(X)
                    found[name] = (_rel_fro(Z, K), watch.seconds)
                peer = found["NTKRandomFeatures"]
                for name, (err, sec) in found.items():
                    rows.append({"kernel": kernel_name, "method": name, "n_components": m,
                                 "seed": seed, "rel_fro_error": err, "seconds": sec, "n": len(X),
                                 "peer": "NTKRandomFeatures", "error_ratio": err / peer[0],
                                 "time_ratio": sec / peer[1]})
            est = CNTKSketch(n_components=m, pixel_dim=m // 4, image_shape=(1, 8, 8),
                             random_state=seed)
            with Stopwatch("process") as watch:
                Z = est.fit_transform(flat)
            rows.append({"kernel": "relu CNTK", "method": "CNTKSketch", "n_components": m,
                         "seed": seed, "rel_fro_error": _rel_fro(Z, K_cntk),
                         "seconds": watch.seconds, "n": N_CNTK_APPROX, "peer": "exact CNTK",
                         "error_ratio": None, "time_ratio": watch.seconds / t_exact_cntk.seconds})
            print(f"  approximation: m={m}, seed={seed}", flush=True)
    return rows


# ----------------------------------------------------------------------------- parts 2, 3


def _row(dataset, task, method, kernel, score, t_feat, t_total, t_exact, n_train, **extra):
    return {"dataset": dataset, "task": task, "method": method, "kernel": kernel, "score": score,
            "feature_seconds": t_feat, "total_seconds": t_total, "exact_seconds": t_exact,
            "speedup": t_exact / t_total if t_exact else None, "n_train": n_train, **extra}


def learning(data) -> list[dict]:
    rows = []
    for name, (X, y, task, _) in data.items():
        tr, te = _split(y, task)
        T = _targets(y, task)
        print(f"  learning: {name}", flush=True)

        def ntk(A, B):
            return neural_kernel(A, B, **RELU)

        pred, t_ntk, _ = _exact_krr(ntk, X[tr], T[tr], X[te])
        rows.append(_row(name, task, "exact NTK", "relu ntk", _score(pred, y[te], task), None,
                         t_ntk, t_ntk, len(tr)))
        for method, est in (("NTKRandomFeatures", NTKRandomFeatures(n_components=N_COMPONENTS,
                                                                    random_state=SEED, **RELU)),
                            ("NTKSketch", NTKSketch(n_components=N_COMPONENTS, random_state=SEED,
                                                    **RELU))):
            pred, tf, tt, _ = _feature_ridge(est, X[tr], T[tr], X[te])
            rows.append(_row(name, task, method, "relu ntk", _score(pred, y[te], task), tf, tt,
                             t_ntk, len(tr)))
        gamma = 1.0 / X.shape[1]

        def rbf(A, B, gamma=gamma):
            return rbf_kernel(A, B, gamma=gamma)

        pred, t_rbf, _ = _exact_krr(rbf, X[tr], T[tr], X[te])
        rows.append(_row(name, task, "exact RBF", "rbf", _score(pred, y[te], task), None, t_rbf,
                         t_rbf, len(tr)))
        n_nys = min(N_COMPONENTS, len(tr))
        for method, est in (
            ("sklearn RBFSampler", RBFSampler(gamma=gamma, n_components=N_COMPONENTS,
                                              random_state=SEED)),
            (f"sklearn Nystroem({n_nys})", Nystroem(gamma=gamma, n_components=n_nys,
                                                    random_state=SEED)),
        ):
            pred, tf, tt, _ = _feature_ridge(est, X[tr], T[tr], X[te])
            rows.append(_row(name, task, method, "rbf", _score(pred, y[te], task), tf, tt, t_rbf,
                             len(tr)))
    return rows


def activations(data) -> list[dict]:
    rows = []
    for act in ("tanh", "erf", "gelu"):
        kw = {"activation": act, **SMOOTH}
        for name, (X, y, task, _) in data.items():
            tr, te = _split(y, task)
            T = _targets(y, task)
            print(f"  activations: {act} on {name}", flush=True)

            def kernel(A, B, kw=kw):
                return neural_kernel(A, B, **kw)

            pred, t_exact, Ktr = _exact_krr(kernel, X[tr], T[tr], X[te])
            rows.append(_row(name, task, "exact", f"{act} ntk", _score(pred, y[te], task), None,
                             t_exact, t_exact, len(tr), kernel_error=0.0))
            for method, est in (
                ("NTKRandomFeatures", NTKRandomFeatures(n_components=N_COMPONENTS,
                                                        random_state=SEED, **kw)),
                ("ActivationKernelSketch", ActivationKernelSketch(
                    kernel="ntk", n_components=N_COMPONENTS, random_state=SEED, **kw)),
            ):
                pred, tf, tt, Ztr = _feature_ridge(est, X[tr], T[tr], X[te])
                rows.append(_row(name, task, method, f"{act} ntk", _score(pred, y[te], task), tf,
                                 tt, t_exact, len(tr), kernel_error=_rel_fro(Ztr, Ktr)))
    return rows


# ----------------------------------------------------------------------------- part 4


def _randhie():
    """statsmodels randhie: standardised covariates, standardised log(1 + mdvis)."""
    import statsmodels.api as sm

    d = sm.datasets.randhie.load_pandas()
    X = StandardScaler().fit_transform(d.exog.to_numpy(float))
    y = np.log1p(d.endog.to_numpy(float))
    return X, (y - y.mean()) / y.std()


def _blocked(kernel):
    """The Gram matrix in blocks of SCALE_BLOCK rows (bounded temporaries)."""
    def gram(A, B):
        return np.concatenate([kernel(A[i:i + SCALE_BLOCK], B)
                               for i in range(0, len(A), SCALE_BLOCK)])
    return gram


def scale(data) -> list[dict]:
    X, y = _randhie()
    idx = np.random.default_rng(SEED).permutation(len(y))
    tr, te = idx[:N_SCALE_TRAIN], idx[N_SCALE_TRAIN:N_SCALE_TRAIN + N_SCALE_TRAIN * 3 // 7]
    loo = tr[:N_SCALE_LOO]
    T = y[:, None]
    gamma = 1.0 / X.shape[1]
    kernels = {
        "relu ntk": (_blocked(lambda A, B: neural_kernel(A, B, **RELU)), (
            ("NTKRandomFeatures", NTKRandomFeatures(n_components=N_COMPONENTS,
                                                    random_state=SEED, **RELU)),
            ("NTKSketch", NTKSketch(n_components=N_COMPONENTS, random_state=SEED, **RELU)))),
        "gelu ntk": (_blocked(lambda A, B: neural_kernel(A, B, activation="gelu", **SMOOTH)), (
            ("NTKRandomFeatures", NTKRandomFeatures(n_components=N_COMPONENTS, random_state=SEED,
                                                    activation="gelu", **SMOOTH)),
            ("ActivationKernelSketch", ActivationKernelSketch(
                kernel="ntk", n_components=N_COMPONENTS, random_state=SEED, activation="gelu",
                **SMOOTH)))),
        "rbf": (_blocked(lambda A, B: rbf_kernel(A, B, gamma=gamma)), (
            ("sklearn RBFSampler", RBFSampler(gamma=gamma, n_components=N_COMPONENTS,
                                              random_state=SEED)),
            ("sklearn Nystroem", Nystroem(gamma=gamma, n_components=N_COMPONENTS,
                                          random_state=SEED)))),
    }
    rows = []
    for kernel_name, (kernel, estimators) in kernels.items():
        print(f"  scale: exact {kernel_name} on {len(tr)} rows", flush=True)
        Kloo = kernel(X[loo], X[loo])
        alpha = _loo_alpha(Kloo, T[loo])
        with Stopwatch("process") as t_exact:
            coef = scipy.linalg.solve(kernel(X[tr], X[tr]) + alpha * np.eye(len(tr)), T[tr],
                                      assume_a="pos", overwrite_a=True)
            pred = kernel(X[te], X[tr]) @ coef
        exact_name = "exact RBF" if kernel_name == "rbf" else "exact NTK"
        rows.append(_row("randhie", "regression", exact_name, kernel_name,
                         _score(pred, y[te], "regression"), None, t_exact.seconds,
                         t_exact.seconds, len(tr), kernel_error=0.0, n_test=len(te)))
        for method, est in estimators:
            with Stopwatch("process") as t_feat:
                est.fit(X[tr])
                Ztr, Zte = est.transform(X[tr]), est.transform(X[te])
            alpha = _loo_alpha(Ztr[:N_SCALE_LOO] @ Ztr[:N_SCALE_LOO].T, T[loo])
            with Stopwatch("process") as t_solve:
                w = scipy.linalg.solve(Ztr.T @ Ztr + alpha * np.eye(Ztr.shape[1]), Ztr.T @ T[tr],
                                       assume_a="pos")
                pred = Zte @ w
            rows.append(_row("randhie", "regression", method, kernel_name,
                             _score(pred, y[te], "regression"), t_feat.seconds,
                             t_feat.seconds + t_solve.seconds, t_exact.seconds, len(tr),
                             kernel_error=_rel_fro(Ztr[:N_SCALE_LOO], Kloo), n_test=len(te)))
            print(f"  scale: {method} ({kernel_name})", flush=True)
    return rows


# ----------------------------------------------------------------------------- part 5


def cntk(data, n_images=N_CNTK_IMAGES) -> list[dict]:
    _, y, task, images = data["digits"]
    keep = np.random.default_rng(SEED).choice(len(y), n_images, replace=False)
    y, images = y[keep], images[keep]
    tr, te = _split(y, task)
    T = _targets(y, task)
    flat = images.reshape(len(images), -1)

    def kernel(A, B):  # B is A: the symmetric Gram (half the image pairs)
        return conv_neural_kernel(A.reshape(-1, 1, 8, 8),
                                  None if B is A else B.reshape(-1, 1, 8, 8), depth=1)

    print(f"  cntk: exact CNTK on {len(y)} digits (minutes)", flush=True)
    pred, t_exact, Ktr = _exact_krr(kernel, flat[tr], T[tr], flat[te])
    rows = [_row(f"digits ({len(y)})", task, "exact CNTK", "relu cntk", _score(pred, y[te], task), None,
                 t_exact, t_exact, len(tr), kernel_error=0.0, n_components=None)]
    for m, p in ((1024, 256), (4096, 256)):
        for seed in (0, 1):
            est = CNTKSketch(n_components=m, pixel_dim=p, image_shape=(1, 8, 8), random_state=seed)
            pred, tf, tt, Ztr = _feature_ridge(est, flat[tr], T[tr], flat[te])
            rows.append(_row(f"digits ({len(y)})", task, f"CNTKSketch({m}, {p})", "relu cntk",
                             _score(pred, y[te], task), tf, tt, t_exact, len(tr),
                             kernel_error=_rel_fro(Ztr, Ktr), n_components=m, seed=seed))
            print(f"  cntk: CNTKSketch m={m} seed={seed}", flush=True)
    # The baseline a user would pick on the same pixels: the RBF kernel (gamma="scale").
    gamma = 1.0 / (flat.shape[1] * flat[tr].var())

    def rbf(A, B):
        return rbf_kernel(A, B, gamma=gamma)

    pred, t_rbf, _ = _exact_krr(rbf, flat[tr], T[tr], flat[te])
    rows.append(_row(f"digits ({len(y)})", task, "exact RBF", "rbf", _score(pred, y[te], task), None,
                     t_rbf, t_exact, len(tr), n_components=None, rbf_seconds=t_rbf))
    for method, est in (
        ("sklearn RBFSampler(4096)", RBFSampler(gamma=gamma, n_components=4096,
                                                random_state=SEED)),
        ("sklearn Nystroem(1024)", Nystroem(gamma=gamma, n_components=1024, random_state=SEED)),
    ):
        pred, tf, tt, _ = _feature_ridge(est, flat[tr], T[tr], flat[te])
        rows.append(_row(f"digits ({len(y)})", task, method, "rbf", _score(pred, y[te], task), tf, tt,
                         t_exact, len(tr), n_components=est.n_components, rbf_seconds=t_rbf))
    return rows


# ----------------------------------------------------------------------------- output


def _print(part, rows):
    print(f"\n== {part}")
    for r in rows:
        print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in r.items()))


def run(results_dir, parts=PARTS[:3], cntk_images=N_CNTK_IMAGES) -> dict:
    """Run the parts, print their rows, write kernels_neural[_<part>].json to ``results_dir``."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        with threadpool_limits(1):
            data = load_datasets()
            for part in parts:
                kw = {"n_images": cntk_images} if part == "cntk" else {}
                rows = globals()[part](data, **kw)
                _print(part, rows)
                out[part] = rows
                meta = {
                    "device": f"CPU ({platform.processor() or platform.machine()}), 1 thread, "
                              "float64",
                    "load_average_1_5_15_min": os.getloadavg(),
                    "timing": "process CPU seconds (bench.timing.Stopwatch('process'))",
                    "torch": torch.__version__, "python": sys.version.split()[0],
                    "part": part, "rows": rows,
                }
                suffix = "" if part == "approximation" else f"_{part}"
                if part == "cntk" and cntk_images != N_CNTK_IMAGES:
                    suffix += f"_{cntk_images}"
                (results_dir / f"kernels_neural{suffix}.json").write_text(
                    json.dumps(meta, indent=2, default=float))
    finally:
        torch.set_num_threads(threads)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path,
                        default=Path(__file__).resolve().parents[1] / "results" / "features")
    parser.add_argument("--part", choices=PARTS, action="append",
                        help="parts to run (repeatable; default all but scale, cntk)")
    parser.add_argument("--cntk-images", type=int, default=N_CNTK_IMAGES,
                        help=f"digit images of the cntk part (default {N_CNTK_IMAGES}, all: 1797)")
    args = parser.parse_args()
    if not 10 <= args.cntk_images <= 1797:
        parser.error(f"--cntk-images must be in [10, 1797], got {args.cntk_images}")
    run(args.results_dir, tuple(args.part or PARTS[:3]), args.cntk_images)
