"""Attention benchmark (same as ``kernelsketch bench attention``); see --help.

Example (GPU): python benchmarks/attention.py --device cuda --n 4096,16384 --causal
"""

import sys

from kernelsketch.bench.attention import main

if __name__ == "__main__":
    sys.exit(main())
