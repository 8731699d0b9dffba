"""Perplexity of SmolLM2-135M on CPython's pydoc text with the last L attention layers patched.

Thin wrapper of :func:`kernelsketch.eval.lm.run_lm_eval` (also
``kernelsketch eval-lm``). Prints a table; writes
benchmarks/results/attention/lm_eval<tag>.json and .png (with each row's NLL per
1024-position segment, so a loss concentrated in one passage shows; ``--per-window``
adds each window's own perplexity to the JSON and the table). On a shared CPU,
``--threads 1`` times the sketches fairly (two threads on busy cores inflate their many
small ops, not SDPA's one call); at 8k, several windows: one window's perplexity can hang
on a single long-range copy. Examples::

    python benchmarks/attention/lm_eval.py --contexts 2048 --layers 4,15 --windows 1 \\
        --tag _cpu_2k --methods hyper:min_seq_len=256 kde:min_seq_len=256 lev
    flock /tmp/ks/bench.lock python benchmarks/attention/lm_eval.py --contexts 8192 \\
        --layers 15,30 --windows 4 --threads 1 --per-window --tag _cpu_8k_centred_s4 \\
        --methods hyper kde --no-plot
    python benchmarks/attention/lm_eval.py --device cuda --contexts 2048,4096,8192 \\
        --layers 4,8,15,30 --windows 4 --tag _gpu \\
        --methods hyper:min_seq_len=256 hyper kde:min_seq_len=256 lev polysketch
"""

import sys
from pathlib import Path

from kernelsketch.eval.lm import main

RESULTS = Path(__file__).resolve().parents[1] / "results" / "attention"

if __name__ == "__main__":
    # --out-dir given on the command line comes later and wins.
    sys.exit(main(["--out-dir", str(RESULTS), *sys.argv[1:]]))
