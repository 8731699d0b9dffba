"""Attention benchmark (same as ``kernelsketch bench attention``); see --help.

Writes benchmarks/results/attention/attention_<device>_<causal|noncausal>.json.
Example (GPU): python benchmarks/attention/attention.py --device cuda --n 4096,16384 --causal
"""

import sys
from pathlib import Path

from kernelsketch.bench.attention import main

RESULTS = Path(__file__).resolve().parents[1] / "results" / "attention"

if __name__ == "__main__":
    # --out-dir given on the command line comes later and wins.
    sys.exit(main(["--out-dir", str(RESULTS), *sys.argv[1:]]))
