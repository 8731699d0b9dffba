"""Attention benchmark: every registered method against the exact baselines, same run.

For each sequence length it times forward (and optionally forward+backward)
of each method variant and of the exact baselines (CPU: SDPA; CUDA: SDPA
with the cuDNN, flash and memory-efficient backends), reports time ratios
against the fastest exact baseline measured in the same run, and the output
error against exact attention: relative Frobenius error and the normalised
spectral error ‖Õ − D⁻¹AV‖₂/(‖D⁻¹A‖₂‖V‖₂), both on a random subset of query
rows for long sequences. Times are medians of :func:`kernelsketch.bench.timing.time_ms`
(one warm-up call; wall clock, device-synchronised, or the process CPU clock).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..attn import MethodConfig, attention, available_methods, get_method
from ..attn.common.gqa import query_positions
from ..attn.common.metrics import spectral_error
from .timing import time_ms


@dataclass
class Variant:
    """A method with a config, under a label (e.g. "hyper-paper")."""

    label: str
    method: str
    config: MethodConfig | None = None


@dataclass
class Row:
    label: str
    method: str
    n: int
    causal: bool
    inputs: str
    fwd_ms: float
    fwd_bwd_ms: float | None
    speedup_fwd: float | None
    speedup_fwd_bwd: float | None
    rel_error: float | None
    spectral_error: float | None
    config: dict = field(default_factory=dict)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def exact_rows(q, k, v, rows, *, scale, is_causal):
    """Exact output of the query ``rows`` (float32/64, one head at a time to bound memory)."""
    B, Hq, N, _ = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.empty(B, Hq, len(rows), v.shape[-1], dtype=acc, device=q.device)
    pos = query_positions(N, M, 1, q.device)[rows]
    for b in range(B):
        for h in range(Hq):
            s = (q[b, h, rows].to(acc) @ k[b, h // (Hq // Hkv)].to(acc).T) * scale
            if is_causal:
                s = s.masked_fill(torch.arange(M, device=q.device) > pos[:, None], float("-inf"))
            out[b, h] = torch.softmax(s, -1) @ v[b, h // (Hq // Hkv)].to(acc)
    return out


def planted_inputs(B, H, n, d, dtype, device, generator, strength=4.0, noise=0.1, kv_heads=None):
    """Each query is a noisy copy of one random key of its key/value head (``kv_heads``,
    default H): one heavy attention entry per row."""
    Hkv = H if kv_heads is None else kv_heads
    k = F.normalize(torch.randn(B, Hkv, n, d, device=device, generator=generator), dim=-1)
    perm = torch.randperm(n, device=device, generator=generator)
    q = k.repeat_interleave(H // Hkv, dim=1)[:, :, perm] + noise / math.sqrt(d) * torch.randn(
        B, H, n, d, device=device, generator=generator)
    v = torch.randn(B, Hkv, n, d, device=device, generator=generator)
    return (q * strength * math.sqrt(d)).to(dtype), (k * strength).to(dtype), v.to(dtype)


def make_inputs(kind, B, H, n, d, dtype, device, seed, kv_heads=None):
    """q [B, H, n, d], k, v [B, kv_heads, n, d]: "random" (standard normal) or "planted"."""
    g = torch.Generator(device=device).manual_seed(seed)
    Hkv = H if kv_heads is None else kv_heads
    if kind == "planted":
        return planted_inputs(B, H, n, d, dtype, device, g, kv_heads=Hkv)
    return tuple(torch.randn(B, h, n, d, device=device, generator=g).to(dtype)
                 for h in (H, Hkv, Hkv))


def _sdpa(q, k, v, is_causal):
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal,
                                          enable_gqa=q.shape[1] != k.shape[1])


def baselines(device: torch.device) -> list[tuple[str, Callable]]:
    """Exact baselines: (label, fn(q, k, v, is_causal)); grouped-query inputs as they are."""
    if device.type != "cuda":
        return [("sdpa", _sdpa)]
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = []
    for label, backend in (("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
                           ("sdpa-flash", SDPBackend.FLASH_ATTENTION),
                           ("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION)):
        def fn(q, k, v, c, backend=backend):
            with sdpa_kernel([backend]):
                return _sdpa(q, k, v, c)
        out.append((label, fn))
    return out


def default_variants() -> list[Variant]:
    """Every registered method except exact with its default config."""
    return [Variant(m, m) for m in available_methods() if m != "exact"]


def run(
    *,
    device: str = "cpu",
    ns: Sequence[int] = (1024, 4096),
    causal: bool = False,
    dtype: torch.dtype | None = None,
    batch: int = 1,
    heads: int = 4,
    kv_heads: int | None = None,
    head_dim: int = 64,
    variants: Sequence[Variant] | None = None,
    inputs: Sequence[str] = ("random",),
    backward: bool = True,
    error_rows: int = 256,
    reps: int = 5,
    clock: str = "wall",
    out_dir: str | Path | None = "benchmarks/results/attention",
    tag: str = "attention",
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run the benchmark; returns (and writes as JSON) the results dict.

    ``heads`` query heads share ``kv_heads`` key/value heads (default: as many);
    ``clock`` is "wall" or "process" (:func:`~kernelsketch.bench.timing.time_ms`).
    """
    kv_heads = heads if kv_heads is None else kv_heads
    dev = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    variants = list(default_variants() if variants is None else variants)
    rows: list[Row] = []
    total = len(ns) * len(inputs) * (len(variants) + len(baselines(dev)))
    step = 0
    for n in ns:
        for kind in inputs:
            q, k, v = make_inputs(kind, batch, heads, n, head_dim, dtype, dev, seed=n,
                                  kv_heads=kv_heads)
            scale = head_dim ** -0.5
            gen = torch.Generator(device=dev).manual_seed(0)
            sub = torch.randperm(n, generator=gen, device=dev)[: min(error_rows, n)].sort().values
            ref = exact_rows(q, k, v, sub, scale=scale, is_causal=causal)
            grad = torch.randn(batch, heads, n, head_dim, device=dev, generator=gen).to(dtype)
            timed = []
            for label, fn in baselines(dev):
                timed.append((label, "exact", None,
                              lambda fn=fn, q=q, k=k, v=v: fn(q, k, v, causal)))
            for var in variants:
                def call(var=var, q=q, k=k, v=v):
                    g = torch.Generator(device=dev).manual_seed(1)
                    return attention(q, k, v, method=var.method, config=var.config,
                                     is_causal=causal, generator=g)
                timed.append((var.label, var.method, var.config, call))
            base_fwd, base_bwd = math.inf, math.inf
            for label, method, cfg, fn in timed:
                step += 1
                if progress:
                    progress(f"[{step}/{total}] {label} n={n} {kind}")
                try:
                    fwd = time_ms(fn, dev, reps=reps, clock=clock)
                    bwd = None
                    if backward:
                        def fb(fn=fn, q=q, k=k, v=v, grad=grad):
                            for t in (q, k, v):
                                t.requires_grad_(True)
                            out = fn()
                            out.backward(grad)
                            for t in (q, k, v):
                                t.grad = None
                                t.requires_grad_(False)
                        bwd = time_ms(fb, dev, reps=reps, clock=clock)
                except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # backend unavailable
                    if progress:
                        progress(f"  skipped {label}: {str(exc).splitlines()[0][:100]}")
                    continue
                rel = spec_err = None
                reference = get_method(method).reference
                if reference is not None:
                    with torch.no_grad():
                        out = fn()
                        want = ref if reference == "exact" else attention(
                            q, k, v, method=reference, is_causal=causal)[:, :, sub]
                    diff = out[:, :, sub].to(want.dtype) - want
                    rel = float(torch.linalg.vector_norm(diff) / torch.linalg.vector_norm(want))
                    if reference == "exact":
                        spec_err = float(spectral_error(
                            out, q, k, v, scale=scale, is_causal=causal,
                            num_rows=min(error_rows, n), generator=torch.Generator().manual_seed(0),
                        ).mean())
                if method == "exact":
                    base_fwd = min(base_fwd, fwd)
                    if bwd is not None:
                        base_bwd = min(base_bwd, bwd)
                rows.append(Row(label, method, n, causal, kind, fwd, bwd, None, None, rel, spec_err,
                                asdict(cfg) if cfg is not None else {}))
            for r in rows:
                if r.n == n and r.inputs == kind and r.speedup_fwd is None:
                    r.speedup_fwd = base_fwd / r.fwd_ms
                    if r.fwd_bwd_ms is not None and math.isfinite(base_bwd):
                        r.speedup_fwd_bwd = base_bwd / r.fwd_bwd_ms
            del q, k, v, ref, grad
    result = {
        "device": device_name(dev),
        "dtype": str(dtype).replace("torch.", ""),
        "batch": batch, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
        "causal": causal, "clock": clock,
        "torch": torch.__version__,
        "speedup_baseline": "fastest exact baseline in the same run",
        "rows": [asdict(r) for r in rows],
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        name = f"{tag}_{dev.type}_{'causal' if causal else 'noncausal'}.json"
        (out / name).write_text(json.dumps(result, indent=1))
        result["path"] = str(out / name)
    return result


def format_table(result: dict) -> str:
    """Plain-text table of a :func:`run` result."""
    head = (f"device: {result['device']}  dtype: {result['dtype']}  B={result['batch']} "
            f"Hq={result['heads']} Hkv={result.get('kv_heads', result['heads'])} "
            f"d={result['head_dim']}  causal={result['causal']}  "
            f"clock={result.get('clock', 'wall')}\n"
            "speed-up = fastest exact baseline time / method time, same run\n")
    cols = ("label", "inputs", "n", "fwd ms", "fwd+bwd ms", "speedup fwd", "speedup f+b",
            "rel err", "spec err")
    lines = [" | ".join(cols)]

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    for r in result["rows"]:
        lines.append(" | ".join((
            r["label"], r["inputs"], str(r["n"]), f(r["fwd_ms"], ".2f"), f(r["fwd_bwd_ms"], ".2f"),
            f(r["speedup_fwd"], ".2f"), f(r["speedup_fwd_bwd"], ".2f"), f(r["rel_error"], ".3g"),
            f(r["spectral_error"], ".3g"))))
    widths = [max(len(line.split(" | ")[i]) for line in lines) for i in range(len(cols))]
    return head + "\n".join(
        " | ".join(c.ljust(w) for c, w in zip(line.split(" | "), widths)) for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from .._args import check_out_dir, choice_list_arg, device_arg, int_arg, int_list_arg

    p = argparse.ArgumentParser(prog="kernelsketch bench attention", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", type=device_arg,
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int_list_arg(min=1), default="1024,4096",
                   help="comma-separated sequence lengths")
    p.add_argument("--causal", action="store_true")
    p.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32", "float64"])
    p.add_argument("--batch", type=int_arg(min=1), default=1)
    p.add_argument("--heads", type=int_arg(min=1), default=4)
    p.add_argument("--kv-heads", type=int_arg(min=1), default=None,
                   help="key/value heads (GQA; --heads must be a multiple), default --heads")
    p.add_argument("--head-dim", type=int_arg(min=1), default=64)
    p.add_argument("--clock", choices=["wall", "process"], default="wall",
                   help="wall clock (device-synchronised) or process CPU time (CPU only)")
    p.add_argument("--methods", type=choice_list_arg(available_methods()), default=None,
                   help="comma-separated methods (default: all)")
    p.add_argument("--inputs", type=choice_list_arg(("random", "planted")), default="random",
                   help="comma-separated: random, planted")
    p.add_argument("--no-backward", action="store_true")
    p.add_argument("--reps", type=int_arg(min=1), default=5)
    p.add_argument("--out-dir", default="benchmarks/results/attention")
    a = p.parse_args(argv)
    dtype = getattr(torch, a.dtype) if a.dtype else None
    # q, k, v, the output gradient and the output: refuse sizes that cannot be allocated.
    itemsize = (torch.finfo(dtype).bits if dtype else 32) // 8
    need = 5 * a.batch * a.heads * max(a.n) * a.head_dim * itemsize
    have = (torch.cuda.get_device_properties(a.device).total_memory if a.device.type == "cuda"
            else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    if need > have:
        p.error(f"arguments --n, --batch, --heads, --head-dim: inputs of batch {a.batch} x "
                f"{a.heads} heads x n={max(a.n)} x "
                f"head dim {a.head_dim} need {need / 2**30:.1f} GiB, more than the "
                f"{have / 2**30:.1f} GiB of {a.device.type} memory")
    if a.kv_heads is not None and a.heads % a.kv_heads:
        p.error(f"argument --kv-heads: --heads must be a multiple of it, got --heads "
                f"{a.heads} and --kv-heads {a.kv_heads}")
    if a.clock == "process" and a.device.type != "cpu":
        p.error(f"argument --clock: process CPU time times CPU work only, got --device "
                f"{a.device}")
    out_dir = check_out_dir(p, a.out_dir)
    variants = None if a.methods is None else [Variant(m, m) for m in a.methods]
    res = run(device=str(a.device), ns=a.n, causal=a.causal, dtype=dtype, batch=a.batch,
              heads=a.heads, kv_heads=a.kv_heads, head_dim=a.head_dim, variants=variants,
              inputs=a.inputs, backward=not a.no_backward, reps=a.reps, clock=a.clock,
              out_dir=out_dir,
              progress=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_table(res))
    print(f"results written to {res['path']}")
    return 0
