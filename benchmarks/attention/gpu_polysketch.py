"""GPU check and timing of the PolySketch Triton kernels (CUDA only, torch + triton).

1. Correctness: the Triton path (forward, and gradients of q, k, v through the
   layer norms and the sketch) against the PyTorch block algorithm at a few
   small sizes, float32 (TF32 products: the kernels take float32 only where
   torch allows TF32, attn/common/triton_utils.py) and bfloat16.
2. Timing: causal PolySketch attention layer (q/k layer norm + Gaussian
   degree-2 sketch r=32 + Triton kernels, blocks of 256 with exact local
   polynomial weights) against PyTorch SDPA with the flash and cuDNN backends,
   forward and forward+backward, B=1, H=16, d=64 and 128, bfloat16,
   n = 4k ... 64k, all in the same run; the crossover length is the shortest
   measured n at which PolySketch is faster.

Prints tables and writes ``benchmarks/results/attention/polysketch_gpu.json``.
Usage: ``python benchmarks/attention/gpu_polysketch.py [--max-n 65536] [--reps 5]``.
``kernelsketch bench gpu`` runs the kernel tests and every method at 4k-131k.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERNELSKETCH_CHECK_FINITE", "0")  # no NaN scan inside the timed region
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kernelsketch import PolySketchAttention, PolySketchConfig
from kernelsketch.attn.common.triton_utils import triton_available
from kernelsketch.attn.polysketch import method as dispatch
from kernelsketch.bench.timing import time_ms

RESULTS = ROOT / "benchmarks" / "results" / "attention"


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def torch_path(layer, q, k, v):
    """The same layer with the Triton dispatch switched off (PyTorch block algorithm)."""
    saved = dispatch.fused_supported
    dispatch.fused_supported = lambda *a, **kw: False
    try:
        return layer(q, k, v)
    finally:
        dispatch.fused_supported = saved


def check(dtype, B, Hq, Hkv, N, D, r, b, tol):
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # float32 takes the kernels (TF32) only so
    try:
        return _check(dtype, B, Hq, Hkv, N, D, r, b, tol)
    finally:
        torch.set_float32_matmul_precision(previous)


def _check(dtype, B, Hq, Hkv, N, D, r, b, tol):
    gen = torch.Generator(device="cuda").manual_seed(N)
    layer = PolySketchAttention(D, PolySketchConfig(sketch_size=r, block_size=b),
                                seed=1, norm_affine=False).cuda()
    q = torch.randn(B, Hq, N, D, device="cuda", generator=gen).to(dtype).requires_grad_()
    k = torch.randn(B, Hkv, N, D, device="cuda", generator=gen).to(dtype).requires_grad_()
    v = torch.randn(B, Hkv, N, D, device="cuda", generator=gen).to(dtype).requires_grad_()
    # The layer hands the kernels float32 scaled, normalised q, k (half inputs too).
    assert dispatch.fused_supported(q.float(), k, v, torch.empty(1, r, device="cuda"),
                                    block_size=b, exact_local=True)
    out = layer(q, k, v)
    w = torch.randn_like(out)
    g = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref = torch_path(layer, q.double(), k.double(), v.double())
    g_ref = torch.autograd.grad((ref * w.double()).sum(), (q, k, v))
    errs = {"out": rel(out, ref)} | {f"d{n}": rel(a, c) for n, a, c in zip("qkv", g, g_ref)}
    row = {"dtype": str(dtype).replace("torch.", ""), "B": B, "Hq": Hq, "Hkv": Hkv, "N": N, "D": D, "r": r,
               "block": b, "tol": tol, "errors": errs, "ok": all(e < tol for e in errs.values())}
    print(f"  {row['dtype']:9s} B{B} Hq{Hq} Hkv{Hkv} N{N:5d} D{D:3d} r{r} b{b}: "
          + " ".join(f"{n}={e:.1e}" for n, e in errs.items()) + ("  ok" if row["ok"] else "  FAIL"))
    return row


def timed(fn, reps):
    """Median milliseconds of fn() (CUDA-synchronised) over reps runs after two warm-up runs."""
    return time_ms(fn, torch.device("cuda"), warmup=2, reps=reps)


def bench(n, d, r, reps):
    H = 16
    q, k, v = (torch.randn(1, H, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    do = torch.randn_like(q)
    layer = PolySketchAttention(d, PolySketchConfig(sketch_size=r), norm_affine=False).cuda()

    def sdpa(backend):
        def run():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return run

    fns = {"polysketch": lambda: layer(q, k, v), "flash": sdpa(SDPBackend.FLASH_ATTENTION),
           "cudnn": sdpa(SDPBackend.CUDNN_ATTENTION)}
    row = {"n": n, "d": d, "r": r}
    for name, fn in fns.items():
        try:
            with torch.no_grad():
                row[f"{name}_fwd_ms"] = timed(fn, reps)
            row[f"{name}_fwdbwd_ms"] = timed(
                lambda fn=fn: torch.autograd.grad(fn(), (q, k, v), do), reps)
        except RuntimeError as exc:  # e.g. a backend unavailable for this shape
            row[f"{name}_fwd_ms"] = row[f"{name}_fwdbwd_ms"] = None
            row[f"{name}_error"] = str(exc).splitlines()[0][:200]
        torch.cuda.empty_cache()
    return row


def ratio(a, b):
    return None if a is None or b is None else b / a


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-n", type=int, default=65536)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    if not torch.cuda.is_available() or not triton_available():
        sys.exit("gpu_polysketch.py needs a CUDA device and triton")
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}, torch {torch.__version__}")
    print("correctness (relative Frobenius error, Triton vs PyTorch block algorithm in float64):")
    checks = [
        check(torch.float32, 1, 4, 2, 1000, 64, 32, 256, 5e-3),
        check(torch.float32, 2, 2, 2, 700, 128, 16, 64, 5e-3),
        check(torch.float32, 1, 2, 1, 333, 64, 64, 128, 5e-3),
        check(torch.bfloat16, 1, 4, 2, 1000, 64, 32, 256, 3e-2),
        check(torch.float16, 2, 2, 2, 700, 128, 16, 64, 5e-3),
    ]
    rows = []
    ns = [n for n in (4096, 8192, 16384, 32768, 65536) if n <= args.max_n]
    configs = [(n, d, 32) for d in (64, 128) for n in ns] + [(32768, 128, 64)]
    print("\ncausal attention, B=1 H=16 bf16, median ms (speed-up = SDPA time / PolySketch time)")
    head = (f"{'n':>6s} {'d':>4s} {'r':>3s} | {'poly fwd':>9s} {'flash':>8s} {'cudnn':>8s} | "
            f"{'poly f+b':>9s} {'flash':>8s} {'cudnn':>8s} | {'x flash':>8s} {'x cudnn':>8s}")
    print(head)
    for n, d, r in configs:
        if n > args.max_n:
            continue
        row = bench(n, d, r, args.reps)
        row["speedup_fwdbwd_vs_flash"] = ratio(row["polysketch_fwdbwd_ms"], row["flash_fwdbwd_ms"])
        row["speedup_fwdbwd_vs_cudnn"] = ratio(row["polysketch_fwdbwd_ms"], row["cudnn_fwdbwd_ms"])
        rows.append(row)

        def f(x):
            return f"{x:8.2f}" if x is not None else f"{'n/a':>8s}"

        print(f"{n:6d} {d:4d} {r:3d} | {f(row['polysketch_fwd_ms'])} {f(row['flash_fwd_ms'])} "
              f"{f(row['cudnn_fwd_ms'])} | {f(row['polysketch_fwdbwd_ms'])} "
              f"{f(row['flash_fwdbwd_ms'])} {f(row['cudnn_fwdbwd_ms'])} | "
              f"{f(row['speedup_fwdbwd_vs_flash'])} {f(row['speedup_fwdbwd_vs_cudnn'])}",
              flush=True)
    crossover = {}
    for d in (64, 128):
        for base in ("flash", "cudnn"):
            faster = [r["n"] for r in rows if r["d"] == d and r["r"] == 32
                      and (r[f"speedup_fwdbwd_vs_{base}"] or 0) > 1]
            crossover[f"d{d}_vs_{base}"] = min(faster) if faster else None
    print("\nshortest measured n where PolySketch fwd+bwd beats SDPA:", crossover)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "polysketch_gpu.json"
    out.write_text(json.dumps({"device": dev, "torch": torch.__version__, "checks": checks,
                                   "timings": rows, "crossover_fwdbwd": crossover}, indent=1))
    print(f"wrote {out}")
    if not all(c["ok"] for c in checks):
        sys.exit("correctness check FAILED")


if __name__ == "__main__":
    main()
