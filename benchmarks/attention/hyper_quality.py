"""Which HyperAttention quality options reduce error at equal time (issue: quality beyond the paper).

For each option (the paper's plain uniform sampling, importance sampling by
‖v_j‖, several hash rounds, a sample size growing with n, KDEformer's AMM
sampling for comparison) it sweeps the budget, measures forward time and the
output errors against exact attention in the same run, and reports the error
of each option interpolated at the time of the plain configuration. Inputs:
random Gaussian and planted heavy entries.

The "growth" section compares a fixed sample size (s = 256) with one that
grows with the key count (``samples_per_key``: s = n/16, which equals 256 at
n = 4096) at n = 2k, 4k, 8k: forward time, relative output error and
normalised spectral error, in benchmarks/results/attention/hyper_quality_growth.json
(the options section writes hyper_quality.json beside it).

    python benchmarks/attention/hyper_quality.py [--section options|growth|all] [--n 4096]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import kernelsketch as ks
from kernelsketch.attn.common.metrics import spectral_error
from kernelsketch.bench.attention import device_name, exact_rows, make_inputs
from kernelsketch.bench.timing import time_ms

OPTIONS = {
    "paper (uniform)": lambda s: ("hyper", ks.HyperConfig(sample_size=s, min_seq_len=0)),
    "value-norm sampling": lambda s: ("hyper", ks.HyperConfig(sample_size=s, min_seq_len=0,
                                                              sampling="value_norm")),
    "2 hash rounds": lambda s: ("hyper", ks.HyperConfig(sample_size=s, min_seq_len=0,
                                                        hash_rounds=2)),
    "kde (AMM sampling)": lambda s: ("kde", ks.KDEConfig(sample_size=s, min_seq_len=0)),
}
BUDGETS = (64, 128, 256, 512)
GROWTH = {
    "fixed s = 256": ks.HyperConfig(sample_size=256, min_seq_len=0),
    "s = n/16 (samples_per_key)": ks.HyperConfig(sample_size=0, samples_per_key=1 / 16,
                                                 min_seq_len=0),
}
GROWTH_NS = (2048, 4096, 8192)
RESULTS = Path(__file__).resolve().parents[1] / "results" / "attention"


def growth(a, dev, dtype):
    """Fixed sample size vs a sample size growing with n (``samples_per_key``)."""
    rows = []
    for n in GROWTH_NS:
        for kind in ("random", "planted"):
            q, k, v = make_inputs(kind, 1, a.heads, n, a.head_dim, dtype, dev, seed=n)
            sub = torch.arange(0, n, max(1, n // 256), device=dev)
            ref = exact_rows(q, k, v, sub, scale=a.head_dim ** -0.5, is_causal=False)
            clock = "process" if dev.type == "cpu" else "wall"
            t_exact = time_ms(lambda q=q, k=k, v=v: ks.attention(q, k, v), dev, reps=3, clock=clock)
            for name, cfg in GROWTH.items():
                def call(cfg=cfg, seed=0, q=q, k=k, v=v):
                    return ks.attention(q, k, v, method="hyper", config=cfg,
                                        generator=torch.Generator(device=dev).manual_seed(seed))
                t = time_ms(call, dev, reps=3, clock=clock)
                rel, spec = [], []
                for seed in range(3):
                    out = call(seed=seed)
                    d = out[:, :, sub].to(ref.dtype) - ref
                    rel.append(float(d.norm() / ref.norm()))
                    spec.append(float(spectral_error(
                        out, q, k, v, num_rows=256,
                        generator=torch.Generator().manual_seed(seed)).mean()))
                row = {"n": n, "inputs": kind, "option": name, "sample_size": cfg.num_samples(n),
                       "ms": t, "exact_ms": t_exact, "rel_error": float(np.mean(rel)),
                       "spectral_error": float(np.mean(spec))}
                rows.append(row)
                print(f"n={n:5d} {kind:8s} {name:28s} s={row['sample_size']:4d} {t:8.1f} ms "
                      f"(exact {t_exact:.1f})  rel {row['rel_error']:.4f}  "
                      f"spec {row['spectral_error']:.4f}", file=sys.stderr, flush=True)
    result = {"device": device_name(dev), "dtype": str(dtype), "heads": a.heads,
              "head_dim": a.head_dim, "block_size": 256, "lsh_bits": 7,
              "time": "median of 3 after a warm-up: process CPU time on CPU, wall time on CUDA",
              "errors": "mean of 3 draws; rel on 256 strided rows, spectral on 256 random rows",
              "rows": rows}
    out = Path(a.out).with_name(Path(a.out).stem + "_growth.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"device {result['device']}, H={a.heads}, d={a.head_dim}, {dtype}, block 256, 7 bits")
    print("n | inputs | option | s | fwd ms | exact ms | rel err | spec err")
    for r in rows:
        print(f"{r['n']} | {r['inputs']} | {r['option']} | {r['sample_size']} | {r['ms']:.1f} | "
              f"{r['exact_ms']:.1f} | {r['rel_error']:.4f} | {r['spectral_error']:.4f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--section", default="all", choices=["options", "growth", "all"])
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--out", default=str(RESULTS / "hyper_quality.json"))
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 gives steadier timings on a shared machine)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if a.section in ("options", "all"):
        options(a, dev, dtype)
    if a.section in ("growth", "all"):
        growth(a, dev, dtype)


def options(a, dev, dtype):
    """Each quality option over a sweep of sample sizes, error at the paper's time."""
    rows = []
    for kind in ("random", "planted"):
        q, k, v = make_inputs(kind, 1, a.heads, a.n, a.head_dim, dtype, dev, seed=7)
        sub = torch.arange(0, a.n, max(1, a.n // 256), device=dev)
        ref = exact_rows(q, k, v, sub, scale=a.head_dim ** -0.5, is_causal=False)
        t_exact = time_ms(lambda q=q, k=k, v=v: ks.attention(q, k, v), dev, reps=3)
        for name, make in OPTIONS.items():
            for s in BUDGETS:
                method, cfg = make(s)

                def call(method=method, cfg=cfg, q=q, k=k, v=v):
                    return ks.attention(q, k, v, method=method, config=cfg,
                                        generator=torch.Generator(device=dev).manual_seed(0))
                t = time_ms(call, dev, reps=3)
                errs = []
                for seed in range(3):
                    out = ks.attention(q, k, v, method=method, config=cfg,
                                       generator=torch.Generator(device=dev).manual_seed(seed))
                    d = out[:, :, sub].to(ref.dtype) - ref
                    errs.append(float(d.norm() / ref.norm()))
                rows.append({"inputs": kind, "option": name, "sample_size": s, "ms": t,
                             "exact_ms": t_exact, "rel_error": float(np.mean(errs))})
                print(f"{kind:8s} {name:22s} s={s:4d} {t:8.1f} ms  err {np.mean(errs):.4f}",
                      file=sys.stderr, flush=True)
    summary = []
    for kind in ("random", "planted"):
        base = [r for r in rows if r["inputs"] == kind and r["option"] == "paper (uniform)"]
        for b in base:
            line = {"inputs": kind, "time_ms": b["ms"], "paper (uniform)": b["rel_error"]}
            for name in OPTIONS:
                if name == "paper (uniform)":
                    continue
                pts = sorted((r["ms"], r["rel_error"]) for r in rows
                             if r["inputs"] == kind and r["option"] == name)
                ts, es = zip(*pts)
                line[name] = float(np.interp(b["ms"], ts, es)) if ts[0] <= b["ms"] <= ts[-1] else None
            summary.append(line)
    result = {"device": device_name(dev), "dtype": str(dtype), "n": a.n, "heads": a.heads,
              "head_dim": a.head_dim, "rows": rows, "error_at_equal_time": summary}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    names = list(OPTIONS)
    print(f"device {result['device']}, n={a.n}, H={a.heads}, d={a.head_dim}, {dtype}; "
          "relative error at the time of the paper's configuration (interpolated; - = outside range)")
    print(" | ".join(["inputs", "time ms"] + names))
    for line in summary:
        cells = [line["inputs"], f"{line['time_ms']:.1f}"]
        cells += ["-" if line.get(nm) is None else f"{line[nm]:.4f}" for nm in names]
        print(" | ".join(cells))


if __name__ == "__main__":
    main()
