"""KDEformer on a ViT-style non-causal case, next to HyperAttention and exact SDPA (issue 4 item 5).

Image transformers attend non-causally over 1k-16k patch tokens with small
heads (d = 64). This runs the runner of ``kernelsketch bench attention`` (same inputs,
timing and error code) forward-only with B=1, H=4, d=64, KDEformer and HyperAttention
at their default budgets with ``min_seq_len=0`` (the approximation at every
length), on random Gaussian inputs and on planted ones (each query close to
one key: a peaked attention map, as between matching image patches). Errors
are on 256 random query rows: ‖Õ−O‖_F/‖O‖_F and ‖Õ−D⁻¹AV‖₂/(‖D⁻¹A‖₂‖V‖₂).

On CPU every call is also timed by process CPU time (``cpu_ms``, median of 3
after a warm-up, ``--threads 1`` by default), which other jobs on a shared
machine do not inflate; ``fwd_ms`` is the runner's wall time.

    python benchmarks/attention/kde_vit.py [--n 1024,2048,4096,8192,16384] [--device cpu]

Writes benchmarks/results/attention/kde_vit_<device>.json.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

import kernelsketch as ks
from kernelsketch.bench.attention import Variant, baselines, format_table, make_inputs, run
from kernelsketch.bench.timing import time_ms

RESULTS = Path(__file__).resolve().parents[1] / "results" / "attention"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", default="1024,2048,4096,8192,16384")
    p.add_argument("--device", default="cpu")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=None,
                   help="default: benchmarks/results/attention/kde_vit_<device>.json")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    variants = [
        Variant("kde", "kde", ks.KDEConfig(min_seq_len=0)),
        Variant("hyper", "hyper", ks.HyperConfig(min_seq_len=0)),
    ]
    res = run(device=a.device, ns=[int(x) for x in a.n.split(",")], causal=False, dtype=dtype,
              heads=a.heads, head_dim=a.head_dim, variants=variants, inputs=("random", "planted"),
              backward=False, reps=a.reps, out_dir=None,
              progress=lambda s: print(s, file=sys.stderr, flush=True))
    if dev.type == "cpu":
        exact = dict(baselines(dev))
        configs = {v.label: v for v in variants}
        for r in res["rows"]:
            # The runner's inputs for this length and kind (it seeds them with n).
            q, k, v = make_inputs(r["inputs"], 1, a.heads, r["n"], a.head_dim, dtype, dev,
                                  seed=r["n"])
            if r["label"] in exact:
                fn = exact[r["label"]]
                r["cpu_ms"] = time_ms(lambda fn=fn, q=q, k=k, v=v: fn(q, k, v, False), dev,
                                      reps=3, clock="process")
            else:
                var = configs[r["label"]]
                r["cpu_ms"] = time_ms(lambda var=var, q=q, k=k, v=v: ks.attention(
                    q, k, v, method=var.method, config=var.config,
                    generator=torch.Generator().manual_seed(1)), dev, reps=3, clock="process")
            print(f"{r['label']:6s} {r['inputs']:8s} n={r['n']:6d} cpu {r['cpu_ms']:9.1f} ms",
                  file=sys.stderr, flush=True)
        for r in res["rows"]:
            base = [b["cpu_ms"] for b in res["rows"] if b["method"] == "exact"
                    and b["n"] == r["n"] and b["inputs"] == r["inputs"]]
            r["cpu_speedup"] = min(base) / r["cpu_ms"]
        res["cpu_time"] = "process CPU time, median of 3 after a warm-up"
    res["threads"] = torch.get_num_threads()
    res["configs"] = {v.label: repr(v.config) for v in variants}
    out = Path(a.out or RESULTS / f"kde_vit_{dev.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(format_table(res))
    if dev.type == "cpu":
        print("label | inputs | n | cpu ms | cpu speed-up vs sdpa | rel err | spec err")
        for r in res["rows"]:
            err = "-" if r["rel_error"] is None else f"{r['rel_error']:.3g} | {r['spectral_error']:.3g}"
            print(f"{r['label']} | {r['inputs']} | {r['n']} | {r['cpu_ms']:.1f} | "
                  f"{r['cpu_speedup']:.2f} | {err}")
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
