"""``kernelsketch bench gpu``: the one command for a CUDA machine (run from a source checkout).

1. Runs the Triton kernel tests on the device, compiled (float16, bfloat16 and
   float32/TF32 against independent float64 references):
   tests/attn/common/test_sortlsh_fused*.py and tests/attn/polysketch/test_fused.py.
   A failure stops here: timings of wrong kernels mean nothing.
2. Times every registered method, forward and forward+backward, against SDPA's
   cuDNN, flash and memory-efficient backends measured in the same run (ratio
   against the fastest), causal and non-causal, at n = 4k ... 131k (default
   B=1, H=16, d=128, bfloat16), with the output error on a row subset
   (:func:`kernelsketch.bench.attention.run`).
3. Writes benchmarks/results/attention/gpu_cuda_{causal,noncausal}.json, the
   tables next to them (.txt) and the test log (gpu_tests.txt).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .attention import format_table, run

KERNEL_TESTS = ("tests/attn/common/test_sortlsh_fused.py",
                "tests/attn/common/test_sortlsh_fused_bwd.py",
                "tests/attn/polysketch/test_fused.py")
LENGTHS = "4096,8192,16384,32768,65536,131072"


def run_kernel_tests(root: Path, log: Path) -> int:
    """pytest of the Triton kernel tests on this machine's GPU; its output goes to ``log``."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
           *(str(root / t) for t in KERNEL_TESTS)]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    log.write_text(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}")
    print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr)
    return done.returncode


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from .._args import check_out_dir, int_arg, int_list_arg

    p = argparse.ArgumentParser(prog="kernelsketch bench gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int_list_arg(min=1), default=LENGTHS,
                   help=f"comma-separated sequence lengths (default {LENGTHS})")
    p.add_argument("--heads", type=int_arg(min=1), default=16)
    p.add_argument("--head-dim", type=int_arg(min=1), default=128)
    p.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16"])
    p.add_argument("--reps", type=int_arg(min=1), default=5)
    p.add_argument("--skip-tests", action="store_true", help="time without running the tests")
    p.add_argument("--out-dir", default="benchmarks/results/attention")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("kernelsketch bench gpu needs a CUDA device (and triton)")
    out_dir = check_out_dir(p, a.out_dir)
    root = Path(__file__).resolve().parents[3]
    if not a.skip_tests:
        if not all((root / t).exists() for t in KERNEL_TESTS):
            p.error(f"the kernel tests are not under {root}: run from a source checkout "
                    "or pass --skip-tests")
        rc = run_kernel_tests(root, out_dir / "gpu_tests.txt")
        if rc:
            print(f"kernel tests FAILED (log: {out_dir / 'gpu_tests.txt'}): no timings",
                  file=sys.stderr)
            return rc
    for causal in (True, False):
        res = run(device="cuda", ns=a.n, causal=causal, dtype=getattr(torch, a.dtype), batch=1,
                  heads=a.heads, head_dim=a.head_dim, reps=a.reps, out_dir=out_dir, tag="gpu",
                  progress=lambda s: print(s, file=sys.stderr, flush=True))
        table = format_table(res)
        Path(res["path"]).with_suffix(".txt").write_text(table + "\n")
        print(table)
        print(f"results written to {res['path']}")
    return 0
