"""Context-parallel attention: time and bytes per rank vs P and N, against ring exact attention.

Under ``torchrun`` (one process per rank; gloo on CPU, NCCL on GPUs), every rank
builds its own shard [B, H, N/P, D] (seeded per rank) and, for each N and method,
times ``kernelsketch.distributed.context_parallel_attention`` (forward) with
``kernelsketch.bench.timing.time_ms``: on CPU the process clock (this rank's CPU
time, one torch thread: on a shared machine it counts the work, not the waits),
on GPUs the wall clock. A barrier precedes each call. Reported per method and N:
the median time of the slowest rank and its ratio to ring exact attention of the
same run and the bytes each rank sends (``count_bytes``, max over ranks).

Usage:
  torchrun --standalone --nproc-per-node 4 benchmarks/distributed/context_parallel.py
  python benchmarks/distributed/context_parallel.py --procs 1,2,4,8   (runs torchrun per P)
  add --causal for causal attention, --shipped for hyper/kde with their default configs.
Writes benchmarks/results/distributed/context_parallel_<cpu|cuda>[_causal][_shipped].json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "distributed"


def configs(shipped: bool = False):
    """The configs of each method; hyper and kde: the paper's estimators (sink 0, window 0),
    or with ``shipped`` their defaults (sink 8, window 128, min_seq_len 1024)."""
    from kernelsketch import HyperConfig, KDEConfig, LevConfig, PolySketchConfig

    return {
        "exact": None,
        "lev": LevConfig(budget=64),
        "polysketch": PolySketchConfig(),
        "hyper": HyperConfig() if shipped else HyperConfig(min_seq_len=1024, sink=0, window=0),
        "kde": KDEConfig() if shipped else KDEConfig(min_seq_len=1024, sink=0, window=0),
    }


def rank_main(args) -> None:
    import torch
    import torch.distributed as dist

    from kernelsketch.bench.timing import time_ms
    from kernelsketch.distributed import context_parallel_attention, count_bytes

    cuda = torch.cuda.is_available() and not args.cpu
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, P = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    clock = "wall" if cuda else "process"
    methods = configs(args.shipped)
    rows = []
    for N in args.lengths:
        n = N // P
        g = torch.Generator(device=device).manual_seed(1000 * N + rank)
        q, k, v = (torch.randn(args.batch, args.heads, n, args.dim, generator=g, device=device,
                               dtype=dtype) for _ in range(3))
        for name in args.methods:
            def call(name=name, q=q, k=k, v=v):
                dist.barrier()
                return context_parallel_attention(
                    q, k, v, method=name, is_causal=args.causal, config=methods[name],
                    generator=torch.Generator(device=device).manual_seed(0))

            with count_bytes() as sent:
                out = call()
            ms = time_ms(call, device if cuda else None, warmup=1, reps=args.reps, clock=clock)
            del out
            stats = torch.tensor([ms, float(sent.total)], dtype=torch.float64, device=device)
            every = [torch.zeros_like(stats) for _ in range(P)]
            dist.all_gather(every, stats)
            every = torch.stack(every).cpu()
            rows.append({"P": P, "N": N, "method": name, "ms_max": float(every[:, 0].max()),
                         "ms_mean": float(every[:, 0].mean()),
                         "bytes_per_rank": int(every[:, 1].max())})
    if rank == 0:
        for row in rows:
            base = next(r for r in rows if r["N"] == row["N"] and r["method"] == "exact")
            row["time_vs_exact"] = row["ms_max"] / base["ms_max"]
        meta = {"device": torch.cuda.get_device_name(device) if cuda else
                f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared)",
                "backend": dist.get_backend(), "clock": clock, "dtype": args.dtype,
                "batch": args.batch, "heads": args.heads, "dim": args.dim,
                "causal": args.causal, "reps": args.reps, "torch": torch.__version__,
                "configs": {k: repr(c) for k, c in methods.items()}}
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        for r in rows:
            print(f"P={r['P']} N={r['N']:6d} {r['method']:10s} {r['ms_max']:9.1f} ms "
                  f"(x{r['time_vs_exact']:.2f} exact) {r['bytes_per_rank'] / 2**20:8.3f} MiB/rank",
                  flush=True)
    dist.destroy_process_group()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[2048, 8192])
    p.add_argument("--methods", type=lambda s: s.split(","), default=list(configs()))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--causal", action="store_true")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cpu", action="store_true", help="gloo on CPU even when GPUs are present")
    p.add_argument("--shipped", action="store_true",
                   help="hyper and kde with their default configs (sink 8, window 128)")
    p.add_argument("--procs", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="run torchrun once per P and collect the results")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if "exact" not in args.methods:
        args.methods = ["exact", *args.methods]
    if "RANK" in os.environ:
        rank_main(args)
        return
    if args.procs is None:
        raise SystemExit("run under torchrun, or give --procs 1,2,4,8")
    import torch

    kind = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    suffix = ("_causal" if args.causal else "") + ("_shipped" if args.shipped else "")
    out = Path(args.out or RESULTS / f"context_parallel_{kind}{suffix}.json")
    merged = {"meta": None, "rows": []}
    forwarded = ["--lengths", ",".join(map(str, args.lengths)), "--methods", ",".join(args.methods),
                 "--batch", str(args.batch), "--heads", str(args.heads), "--dim", str(args.dim),
                 "--dtype", args.dtype, "--reps", str(args.reps),
                 *(["--causal"] if args.causal else []), *(["--cpu"] if args.cpu else []),
                 *(["--shipped"] if args.shipped else [])]
    with tempfile.TemporaryDirectory() as tmp:
        for P in args.procs:
            part = Path(tmp) / f"{P}.json"
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc-per-node={P}", __file__, *forwarded, "--out", str(part)],
                           check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            res = json.loads(part.read_text())
            merged["meta"] = res["meta"]
            merged["rows"] += res["rows"]
    merged["meta"]["procs"] = args.procs
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
