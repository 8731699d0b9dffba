"""HyperAttention on a CUDA GPU: kernel checks, then timings against SDPA in the same run.

Usage (repository root, on the GPU machine):
    PYTHONPATH=src python benchmarks/attention/gpu_hyper.py --causal --n 4096,8192,...
Runs the Triton-vs-torch kernel tests on CUDA first, then the runner of
``kernelsketch bench attention`` with B=1, H=32, d=128, bf16: the paper's
configuration ("hyper-paper": lsh_bits=7, block_size=256, sample_size=256, min_seq_len=4096) next to the
quality options (importance sampling by ‖v‖, a sample size growing with n),
against SDPA cuDNN, flash and efficient, forward and forward+backward.
Writes benchmarks/results/attention/hyper_<device>_<causal|noncausal>.json
(or under $OUT when set).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from kernelsketch import HyperConfig, KDEConfig
from kernelsketch.bench.attention import Variant, format_table, run

RESULTS = Path(__file__).resolve().parents[1] / "results" / "attention"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", default="4096,8192,16384,32768,65536,131072")
    p.add_argument("--causal", action="store_true")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--no-backward", action="store_true")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not a.skip_tests:
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                              "tests/attn/common/test_sortlsh_fused.py",
                              "tests/attn/common/test_sortlsh_fused_bwd.py",
                              "tests/attn/common/test_exact.py"])
        if rc != 0:
            sys.exit(rc)
    variants = [
        Variant("hyper-paper", "hyper", HyperConfig()),
        Variant("hyper-vnorm", "hyper", HyperConfig(sampling="value_norm")),
        Variant("hyper-s512", "hyper", HyperConfig(sample_size=512)),
        Variant("hyper-b128-s512", "hyper", HyperConfig(block_size=128, sample_size=512)),
        Variant("hyper-grow", "hyper", HyperConfig(sample_size=128, samples_per_key=1 / 512)),
        Variant("kde", "kde", KDEConfig()),
    ]
    out_dir = Path(os.environ.get("OUT", RESULTS))
    res = run(device=device, ns=[int(x) for x in a.n.split(",")], causal=a.causal,
              heads=a.heads, head_dim=a.head_dim, variants=variants, backward=not a.no_backward,
              reps=a.reps, out_dir=out_dir, tag="hyper",
              progress=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_table(res))
    print(json.dumps({"written": res["path"]}))


if __name__ == "__main__":
    main()
