"""Accuracy of the dual-activation quadratures against the closed forms, by input norm.

For erf, GeLU, Gaussian, sin and ReLU, pairs of inputs of equal norm r in
{0.5, 1, 3, 5, 10} at correlations rho in {-0.99, -0.5, 0, 0.5, 0.9, 0.99, 1}
(the pre-activation covariance [[r^2, rho r^2], [rho r^2, r^2]]): the largest
absolute error of E[sigma(u) sigma(v)] and of E[sigma'(u) sigma'(v)] against
the closed forms, for

- the former rule: 2-D Gauss-Hermite with 64 nodes per dimension (what
  ``dual_activation(method="quadrature")`` used before);
- ``method="quadrature"``: the adaptive composite Gauss-Legendre rule graded
  toward the activation's features (tol 1e-10);
- ``method="hermite"``: the Hermite series with its tail bound (tol 1e-10), or
  the ``ValueError`` it raises when the bound is not met within degree 256
  (reported as "refused").

Also the process CPU time per kernel entry of the adaptive quadrature (one
thread; indicative, shared machine). Run ``python benchmarks/features/neural_quadrature.py``;
writes ``benchmarks/results/features/neural_quadrature.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from kernelsketch.bench.timing import Stopwatch
from kernelsketch.features import ACTIVATIONS
from kernelsketch.features.activations import dual_pair

NORMS = (0.5, 1.0, 3.0, 5.0, 10.0)
RHOS = (-0.99, -0.5, 0.0, 0.5, 0.9, 0.99, 1.0)
NAMES = ("erf", "gelu", "gaussian", "sin", "relu")


def gauss_hermite_64(fn, a, b, c, n_nodes=64):
    """The former rule: 2-D Gauss-Hermite, u = sqrt(a) g1, v = sqrt(b)(rho g1 + sqrt(1-rho^2) g2)."""
    x, w = np.polynomial.hermite_e.hermegauss(n_nodes)
    x, w = torch.from_numpy(x), torch.from_numpy(w / math.sqrt(2 * math.pi))
    rho = (c / (a.sqrt() * b.sqrt())).clamp(-1, 1)
    u = a.sqrt()[:, None, None] * x[:, None]
    v = b.sqrt()[:, None, None] * (rho[:, None, None] * x[:, None]
                                   + (1 - rho * rho).sqrt()[:, None, None] * x[None, :])
    return (fn(u) * fn(v) * w[:, None] * w[None, :]).sum((-2, -1))


def measure() -> list[dict]:
    rows = []
    for name in NAMES:
        act = ACTIVATIONS[name]
        for r in NORMS:
            a = torch.full((len(RHOS),), r * r, dtype=torch.float64)
            c = torch.tensor(RHOS, dtype=torch.float64) * r * r
            for derivative in (False, True):
                exact = (act.derivative_dual if derivative else act.dual)(a, a, c)
                fn = act.grad if derivative else act.fn
                old = (gauss_hermite_64(fn, a, a, c) - exact).abs().max().item()
                with Stopwatch("process") as watch:
                    quad = dual_pair(act, a, a, c, derivative=True, method="quadrature")[derivative]
                try:
                    herm = dual_pair(act, a, a, c, derivative=True, method="hermite")[derivative]
                    herm_err = (herm - exact).abs().max().item()
                except ValueError:
                    herm_err = "refused"
                rows.append({
                    "activation": name, "norm": r, "derivative": derivative,
                    "scale": exact.abs().max().item(),
                    "gauss_hermite_64": old, "quadrature": (quad - exact).abs().max().item(),
                    "hermite": herm_err,
                    "quadrature_ms_per_entry": 1e3 * watch.seconds / len(RHOS),
                })
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path,
                        default=Path(__file__).resolve().parents[1] / "results" / "features")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = measure()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "neural_quadrature.json").write_text(json.dumps(
        {"device": "CPU, 1 thread, float64", "load_average_1_5_15_min": os.getloadavg(),
         "timing": "process CPU time",
         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
