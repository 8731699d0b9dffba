"""Function recovery: error vs number of samples, leverage / universal vs uniform sampling.

1. Spherical harmonics (arXiv 2202.12995): recover a random degree-q expansion on
   S^{d-1} from noisy samples (noise 1% of its rms), and the smooth zonal function
   exp(2<x, v>) (compared with its best degree-q approximation), for sample counts
   from β/2 to β·2 ln β, β = dim H_{≤q}. On the sphere the leverage function of
   H_{≤q} is constant, so uniform sampling is leverage sampling.
2. Fourier-constrained signals on [0, 1] (STOC 2019 universal sampling): relative
   L2 error of the weighted kernel ridge reconstruction from m samples drawn from the
   universal density, uniformly, and from the half/half mixture, for m = s_λ .. 16 s_λ, on
   - a narrow band F=2 at λ=1e-12 (polynomial-like class), with its edge-extremal
     signal (the function at the leverage peak t = 0);
   - 6 Fourier-sparse frequencies clustered in [-2, 2] (λ=1e-12), complex signal;
   - a bandlimited class F=10 (λ=1e-8), random signals Σ a_j sinc(2F(t - c_j));
   - a multiband class (±[11, 14], λ=1e-10), random sums of cosines.
Median and 90th percentile over trials.

Usage: python benchmarks/recovery/recovery.py [--quick]
Writes benchmarks/results/recovery/recovery.json and recovery.png
(``--quick``: recovery_quick.json and .png).
Times (``seconds_median``): wall clock, ``Stopwatch`` of :mod:`kernelsketch.bench.timing`.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import warnings
from pathlib import Path

import numpy as np

from kernelsketch.bench.timing import Stopwatch
from kernelsketch.features.gegenbauer import (
    gegenbauer,
    gegenbauer_coefficients,
    harmonic_space_dimension,
    uniform_sphere,
)
from kernelsketch.recovery import (
    Bandlimited,
    Multiband,
    SparseFrequencies,
    default_signal_samples,
    reconstruct_signal,
    recover_spherical,
    statistical_dimension,
)

RESULTS = Path(__file__).resolve().parents[1] / "results" / "recovery"
SAMPLINGS = ("universal", "uniform", "mixture")


# ---------------------------------------------------------------- spherical
def random_expansion(d, q, rng, terms=3):
    centers = [uniform_sphere(terms, d, rng) for _ in range(q + 1)]
    weights = [rng.standard_normal(terms) for _ in range(q + 1)]
    return lambda X: sum(
        gegenbauer(X @ centers[l].T, q, d)[..., l] @ weights[l] for l in range(q + 1)
    )


def spherical(rng, d, q, trials):
    beta = harmonic_space_dimension(q, d)
    X = uniform_sphere(2000, d, rng)
    mults = [0.5, 0.9, 1.0, 1.5, 2.0, math.log(beta), 2 * math.log(beta)]
    rows = []
    for mult in mults:
        s = round(mult * beta)
        poly_err, smooth_err, best_err, secs = [], [], [], []
        for _ in range(trials):
            f = random_expansion(d, q, rng)
            scale = np.sqrt(np.mean(f(X) ** 2))
            noisy = lambda W, f=f, scale=scale: f(W) + 0.01 * scale * rng.standard_normal(len(W))
            with Stopwatch() as watch, warnings.catch_warnings():  # s < dim H<=q: in the sweep
                warnings.simplefilter("ignore", UserWarning)
                g = recover_spherical(noisy, d, q, s, random_state=rng)
            secs.append(watch.seconds)
            poly_err.append(np.linalg.norm(g(X) - f(X)) / np.linalg.norm(f(X)))
            v = uniform_sphere(1, d, rng)[0]
            h = lambda W, v=v: np.exp(2 * W @ v)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                g = recover_spherical(h, d, q, s, random_state=rng)
            smooth_err.append(np.linalg.norm(g(X) - h(X)) / np.linalg.norm(h(X)))
            best = gegenbauer(X @ v, q, d) @ gegenbauer_coefficients(lambda t: np.exp(2 * t), q, d)
            best_err.append(np.linalg.norm(best - h(X)) / np.linalg.norm(h(X)))
        rows.append(
            {
                "n_samples": s,
                "samples_over_dim": s / beta,
                "noisy_poly_median": float(np.median(poly_err)),
                "noisy_poly_p90": float(np.quantile(poly_err, 0.9)),
                "smooth_median": float(np.median(smooth_err)),
                "smooth_best_approx": float(np.median(best_err)),
                "seconds_median": float(np.median(secs)),
            }
        )
        print(
            f"  sphere d={d} q={q} β={beta} s={s:5d} ({s / beta:4.2f}β)  "
            f"noisy poly err {rows[-1]['noisy_poly_median']:.2e} (p90 {rows[-1]['noisy_poly_p90']:.2e})  "
            f"exp err {rows[-1]['smooth_median']:.2e} vs best {rows[-1]['smooth_best_approx']:.2e}",
            flush=True,
        )
    return {"d": d, "degree": q, "dimension": beta, "noise": 0.01, "rows": rows}


# ---------------------------------------------------------------- fourier
GRID = np.linspace(0.0, 1.0, 3001)


def edge_signal(spec, reg, n=160):
    """Σ_i φ_i(0) φ_i(t) over the eigenfunctions of 𝒦 above λ (Nyström-extended)."""
    x, w = np.polynomial.legendre.leggauss(n)
    t, w = (x + 1) / 2, w / 2
    sw = np.sqrt(w)
    e, V = np.linalg.eigh(sw[:, None] * spec.kernel(t[:, None] - t[None, :]) * sw[None, :])
    keep = e > reg
    e, V = e[keep], V[:, keep]
    b = sw * (V @ ((spec.kernel(0.0 - t) @ (sw[:, None] * V)) / e / e))
    return lambda tt: spec.kernel(np.asarray(tt)[..., None] - t) @ b


def translates(spec, rng, n=12):
    c, a = rng.uniform(0, 1, size=n), rng.standard_normal(n)
    return lambda t: np.real(spec.kernel(np.asarray(t)[..., None] - c)) @ a


def cosines(lo, hi, rng, n=6):
    f, p, a = rng.uniform(lo, hi, n), rng.uniform(0, 2 * np.pi, n), rng.standard_normal(n)
    return lambda t: np.cos(2 * np.pi * f * np.asarray(t)[..., None] + p) @ a


def sparse_complex(freqs, rng):
    c = rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))
    return lambda t: np.exp(2j * np.pi * np.asarray(t)[..., None] * freqs) @ c


def fourier_cases(rng):
    clustered = np.sort(rng.uniform(-2.0, 2.0, size=6))
    band2, band10 = Bandlimited(2.0), Bandlimited(10.0)
    multi = Multiband([(-14.0, -11.0), (11.0, 14.0)])
    return [
        ("narrow band F=2, edge signal", band2, 1e-12, lambda r: edge_signal(band2, 1e-12)),
        (
            "6 clustered frequencies",
            SparseFrequencies(clustered),
            1e-12,
            lambda r: sparse_complex(clustered, r),
        ),
        ("bandlimited F=10", band10, 1e-8, lambda r: translates(band10, r)),
        ("multiband ±[11,14]", multi, 1e-10, lambda r: cosines(11.0, 14.0, r)),
    ]


def fourier(rng, trials, mults):
    out = []
    for name, spec, reg, make in fourier_cases(rng):
        s = statistical_dimension(spec, 1.0, regularization=reg)
        rows = []
        for mult in mults:
            m = round(mult * s)
            row = {"n_samples": m, "samples_over_s": mult}
            for sampling in SAMPLINGS:
                errs = []
                for _ in range(trials):
                    f = make(rng)
                    rec = reconstruct_signal(
                        f, 1.0, spec, m, regularization=reg, sampling=sampling, random_state=rng
                    )
                    errs.append(np.linalg.norm(rec(GRID) - f(GRID)) / np.linalg.norm(f(GRID)))
                row[f"{sampling}_median"] = float(np.median(errs))
                row[f"{sampling}_p90"] = float(np.quantile(errs, 0.9))
            rows.append(row)
            print(
                f"  {name:30s} s={s:6.1f} m={m:5d} ({mult:4.1f}s)  "
                + "  ".join(
                    f"{k} {row[k + '_median']:.2e} (p90 {row[k + '_p90']:.2e})" for k in SAMPLINGS
                ),
                flush=True,
            )
        out.append(
            {
                "case": name,
                "regularization": reg,
                "statistical_dimension": s,
                "default_samples": default_signal_samples(s),
                "rows": rows,
            }
        )
    return out


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sph, fou = result["spherical"], result["fourier"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, sp in zip(axes[0, :2], sph):
        x = [r["samples_over_dim"] for r in sp["rows"]]
        ax.semilogy(
            x,
            [r["noisy_poly_median"] for r in sp["rows"]],
            "o-",
            label="degree-q expansion, 1% noise",
        )
        ax.semilogy(x, [r["smooth_median"] for r in sp["rows"]], "s-", label="exp(2<x,v>)")
        ax.semilogy(
            x,
            [r["smooth_best_approx"] for r in sp["rows"]],
            "k--",
            label="best degree-q approx of exp",
        )
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set_title(f"sphere S^{sp['d'] - 1}, q={sp['degree']}, dim H≤q={sp['dimension']}")
        ax.set_xlabel("samples / dim H≤q (uniform = leverage sampling)")
        ax.set_ylabel("relative L2 error")
        ax.legend(fontsize=8)
    panels = [axes[0, 2], axes[1, 0], axes[1, 1], axes[1, 2]]
    for ax, case in zip(panels, fou):
        x = [r["samples_over_s"] for r in case["rows"]]
        for sampling, style in zip(SAMPLINGS, ("o-", "s--", "^:")):
            ax.loglog(
                x,
                [r[f"{sampling}_median"] for r in case["rows"]],
                style,
                label=f"{sampling} (median)",
            )
            ax.fill_between(
                x,
                [r[f"{sampling}_median"] for r in case["rows"]],
                [r[f"{sampling}_p90"] for r in case["rows"]],
                alpha=0.15,
            )
        ax.set_title(
            f"{case['case']} (s_λ={case['statistical_dimension']:.1f}, λ={case['regularization']:g})",
            fontsize=10,
        )
        ax.set_xlabel("samples / statistical dimension")
        ax.set_ylabel("relative L2 error")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials and sizes")
    args = parser.parse_args()
    rng = np.random.RandomState(0)  # also passed as random_state (scikit-learn meaning)
    trials = 3 if args.quick else 6
    print("spherical harmonics (uniform = leverage sampling)")
    sph = [
        spherical(rng, 3, 6 if args.quick else 8, trials),
        spherical(rng, 5, 3 if args.quick else 4, trials),
    ]
    print("Fourier-constrained signals on [0, 1]")
    mults = [1.0, 2.0, 4.0, 8.0] if args.quick else [1.0, 1.5, 2.0, 3.0, 4.0, 8.0, 16.0]
    fou = fourier(rng, trials, mults)
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
        },
        "trials": trials,
        "spherical": sph,
        "fourier": fou,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "recovery_quick" if args.quick else "recovery"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / f"{name}.png")
    print(f"wrote {RESULTS / name}.json and {name}.png")


if __name__ == "__main__":
    main()
