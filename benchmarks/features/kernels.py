"""Kernel feature-map benchmarks (dispatcher).

``python benchmarks/features/kernels.py --section neural|regression|all``:

- ``neural``: neural-kernel feature maps (NTK, CNTK, dual activations) vs exact
  kernels and scikit-learn baselines (:mod:`kernels_neural`).
- ``regression``: polynomial / zonal / Gaussian features in kernel ridge
  regression, and the input-sparsity timing of ``PolynomialLeverageSampler``
  (:mod:`kernels_regression`, when present).

Each section prints its tables and writes JSON / PNG under ``--results-dir``
(default ``benchmarks/results/features``).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "features"


def _load(name: str):
    """Import benchmarks/features/<name>.py as a module, or None if the file does not exist."""
    path = HERE / f"{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"_kernelsketch_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--section", choices=("neural", "regression", "all"), default="all")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sections = ("neural", "regression") if args.section == "all" else (args.section,)
    for section in sections:
        module = _load(f"kernels_{section}")
        if module is None:
            print(
                f"[{section}] benchmarks/features/kernels_{section}.py not found: skipped",
                file=sys.stderr,
            )
            if args.section != "all":
                return 1
            continue
        print(f"=== {section} ===")
        module.run(args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
