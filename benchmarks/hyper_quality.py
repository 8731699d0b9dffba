"""Which HyperAttention quality options reduce error at equal time (issue: quality beyond the paper).

For each option (the paper's plain uniform sampling, importance sampling by
‖v_j‖, several hash rounds, a sample size growing with n, KDEformer's AMM
sampling for comparison) it sweeps the budget, measures forward time and the
output errors against exact attention in the same run, and reports the error
of each option interpolated at the time of the plain configuration. Inputs:
random Gaussian and planted heavy entries.

    python benchmarks/hyper_quality.py [--n 4096] [--device cpu]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import kernelsketch as ks
from kernelsketch.bench.attention import device_name, exact_rows, make_inputs, time_ms

OPTIONS = {
    "paper (uniform)": lambda s: ("hyper", ks.HyperConfig(sample_size=s, min_seq_len=0)),
    "value-norm sampling": lambda s: ("hyper", ks.HyperConfig(sample_size=s, min_seq_len=0,
                                                              sampling="value_norm")),
    "2 hash rounds": lambda s: ("hyper", ks.HyperConfig(sample_size=s, min_seq_len=0,
                                                        hash_rounds=2)),
    "kde (AMM sampling)": lambda s: ("kde", ks.KDEConfig(sample_size=s, min_seq_len=0)),
}
BUDGETS = (64, 128, 256, 512)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--out", default="benchmarks/results/hyper_quality.json")
    a = p.parse_args()
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    rows = []
    for kind in ("random", "planted"):
        q, k, v = make_inputs(kind, 1, a.heads, a.n, a.head_dim, dtype, dev, seed=7)
        sub = torch.arange(0, a.n, max(1, a.n // 256), device=dev)
        ref = exact_rows(q, k, v, sub, scale=a.head_dim ** -0.5, is_causal=False)
        t_exact = time_ms(lambda: ks.attention(q, k, v), dev, reps=3)
        for name, make in OPTIONS.items():
            for s in BUDGETS:
                method, cfg = make(s)

                def call(method=method, cfg=cfg):
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
