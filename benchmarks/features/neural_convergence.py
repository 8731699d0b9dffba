"""Finite-width networks against their infinite-width kernels: error against width.

For each activation (relu, erf, tanh, gelu) and each kernel (NNGP, NTK,
standard-parameterization NTK / width), depth 2, weight_std 1.3, bias_std 0.4,
8 inputs (rows of a seeded Gaussian, d = 4): the relative Frobenius error
||Theta_n - Theta|| / ||Theta|| of one random network of width n
(:func:`~kernelsketch.features.neural.empirical_kernel`: forward and backward with
torch.autograd) against :func:`~kernelsketch.features.neural_kernel`, averaged
over ``--networks`` networks, for widths 64 .. 4096, and the slope of
log(mean error) against log(width) (theory: -1/2, the fluctuations of the NTK;
its mean is off by O(1/width)). Run
``python benchmarks/features/neural_convergence.py``; writes
``benchmarks/results/features/neural_convergence.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from kernelsketch.features import ACTIVATIONS, neural_kernel
from kernelsketch.features.neural import _network_kernels

WIDTHS = (64, 256, 1024, 4096)
NETWORK = {"depth": 2, "weight_std": 1.3, "bias_std": 0.4}
KERNELS = (("nngp", "ntk"), ("ntk", "ntk"), ("ntk", "standard"))


def measure(networks: int) -> list[dict]:
    X = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rows = []
    for name in ("relu", "erf", "tanh", "gelu"):
        exact = [neural_kernel(X, activation=name, kernel=k, parameterization=p, **NETWORK)
                 for k, p in KERNELS]
        errs = {k: [] for k in range(3)}
        for width in WIDTHS:
            found = {k: [] for k in range(3)}
            for i in range(networks):
                got = _network_kernels(X, ACTIVATIONS[name], NETWORK["depth"], width,
                                       NETWORK["weight_std"], NETWORK["bias_std"],
                                       torch.Generator().manual_seed(1000 * width + i))
                for k in range(3):
                    found[k].append((torch.linalg.norm(got[k] - exact[k])
                                     / torch.linalg.norm(exact[k])).item())
            for k in range(3):
                errs[k].append(float(np.mean(found[k])))
        for k, (kernel, parameterization) in enumerate(KERNELS):
            slope = float(np.polyfit(np.log(WIDTHS), np.log(errs[k]), 1)[0])
            rows.append({"activation": name, "kernel": kernel,
                         "parameterization": parameterization, "widths": list(WIDTHS),
                         "mean_rel_error": errs[k], "slope": slope, "networks": networks})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", type=int, default=8)
    parser.add_argument("--results-dir", type=Path,
                        default=Path(__file__).resolve().parents[1] / "results" / "features")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = measure(args.networks)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "neural_convergence.json").write_text(json.dumps(
        {"device": "CPU, 1 thread, float64", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
