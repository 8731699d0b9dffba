"""CPU speed of every sketched method's DEFAULT config against SDPA in the same run (issue 16).

One command prints the table and writes
benchmarks/results/attention/cpu_speed.json:

    flock /tmp/ks/bench.lock python benchmarks/attention/cpu_speed.py            # ~10 min
    python benchmarks/attention/cpu_speed.py --causal-n 8192 --noncausal-n 8192  # quicker

Setup: CPU, ``--threads`` torch threads (default 2), B = 1, Hq = 9 query and
Hkv = 3 key/value heads (SmolLM2's), d = 64, ``--dtypes`` (default float32 and
bfloat16: inputs, SDPA and the method in that dtype), forward only; process
CPU time (:func:`kernelsketch.bench.timing.time_ms`, ``clock="process"``,
median of ``--reps`` after one warm-up); speed-up = SDPA's time / the method's,
both measured in the same run on the same inputs. Inputs "random" (standard
normal) and "planted" (each query a noisy copy of one key: one heavy entry per
row). Errors on 256 random query rows against float32-accumulated exact
attention: relative Frobenius and the normalised spectral error
‖Õ − D⁻¹AV‖₂ / (‖D⁻¹A‖₂‖V‖₂) (polysketch: relative error against exact
polynomial attention). The README's quick start (causal hyper with its
default config, B = 1, H = 8, n = 16384) is timed against its exact call.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from kernelsketch.bench.attention import Variant, device_name, run
from kernelsketch.bench.timing import time_ms

RESULTS = Path(__file__).resolve().parents[1] / "results" / "attention"
METHODS = ("hyper", "kde", "polysketch", "lev")


def readme_quick_start(reps: int) -> dict:
    """The README's quick start: exact vs causal hyper (default config), n = 16384, H = 8."""
    import kernelsketch as ks

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, 16384, 64, generator=g) for _ in range(3))
    exact = time_ms(lambda: ks.attention(q, k, v, is_causal=True), clock="process", reps=reps)
    hyper = time_ms(lambda: ks.attention(q, k, v, method="hyper", is_causal=True, return_lse=True,
                                         generator=torch.Generator().manual_seed(0)),
                    clock="process", reps=reps)
    return {"exact_ms": exact, "hyper_ms": hyper, "speedup": exact / hyper}


def table(results: list[dict], quick: dict | None) -> str:
    lines = [("| dtype | causal | n | inputs | method (default config) | ms | SDPA ms | speed-up "
              "| rel err | spec err |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for r in res["rows"]:
            if r["method"] == "exact":
                continue
            base = next(b for b in res["rows"] if b["method"] == "exact" and b["n"] == r["n"]
                        and b["inputs"] == r["inputs"])
            spec = "-" if r["spectral_error"] is None else f"{r['spectral_error']:.3f}"
            rel = "-" if r["rel_error"] is None else f"{r['rel_error']:.3g}"
            lines.append(f"| {res['dtype']} | {res['causal']} | {r['n']} | {r['inputs']} | {r['label']} | "
                         f"{r['fwd_ms']:.0f} | {base['fwd_ms']:.0f} | {r['speedup_fwd']:.2f} | "
                         f"{rel} | {spec} |")
    if quick is not None:
        lines.append(f"\nREADME quick start (causal hyper, default config, H=8, n=16384): "
                     f"{quick['hyper_ms']:.0f} ms vs exact {quick['exact_ms']:.0f} ms, "
                     f"speed-up {quick['speedup']:.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--causal-n", default="4096,8192,16384,32768")
    p.add_argument("--noncausal-n", default="4096,8192", help="0 or empty: none")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-quick-start", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "cpu_speed.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    variants = [Variant(m, m) for m in a.methods.split(",")]
    results = []
    # Shortest problems first, one run per (n, dtype, causal), each saved when done: what is
    # measured so far survives an interruption.
    dtypes = a.dtypes.split(",")
    jobs = sorted(((int(n), dtype, causal) for causal, ns in ((True, a.causal_n),
                                                               (False, a.noncausal_n))
                   for n in ns.split(",") if n and int(n) > 0 for dtype in dtypes),
                  key=lambda job: (job[0], dtypes.index(job[1]), not job[2]))
    for n, dtype, causal in jobs:
        print(f"n={n}, {dtype}, causal={causal}", file=sys.stderr, flush=True)
        results.append(run(device="cpu", ns=[n], causal=causal, dtype=getattr(torch, dtype),
                           heads=9, kv_heads=3, head_dim=64, variants=variants,
                           inputs=("random", "planted"), backward=False, reps=a.reps,
                           clock="process", out_dir=None,
                           progress=lambda s: print(s, file=sys.stderr, flush=True)))
        save(a.out, results, None)
    quick = None if a.no_quick_start else readme_quick_start(a.reps)
    print(f"device: {device_name(torch.device('cpu'))}, {a.dtypes}, B=1, Hq=9, Hkv=3, d=64, "
          f"process CPU time, median of {a.reps}, torch {torch.__version__}")
    print(table(results, quick))
    save(a.out, results, quick)
    print(f"results written to {a.out}")
    return 0


def save(path: str, results: list[dict], quick: dict | None) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": results, "readme_quick_start": quick}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
