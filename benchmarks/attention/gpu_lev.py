"""LevAttention on CUDA: correctness of the torch path, then time vs SDPA in the same run.

LevAttention has no Triton kernel: after selection, attention runs over S
gathered keys (S = 32 per head), which is one small SDPA / matmul call; the
question this script answers is whether selection (the d x d Gram, its
pseudo-inverse, the per-key scores and a top-k over n keys) plus that call
beats full attention, and from which n.

1. Correctness (float32, n = 1024 and 4096, GQA, causal and not, window): the
   CUDA output and gradients vs a float64 CPU oracle of softmax attention
   restricted to the same selected keys; the CUDA set vs the CPU set.
2. Timing (fp16, B = 1, Hq = Hkv = 8, D = 64, budget 32), n = 4k ... 131k,
   median device-synchronised wall time (bench.timing.time_ms) after two
   warm-up calls: selection alone, LevAttention forward
   (non-causal, causal) and forward+backward, against SDPA with the flash and
   cuDNN backends (torch.nn.attention.sdpa_kernel) on the same inputs.

Prints tables and writes benchmarks/results/attention/lev_gpu.json. Needs only torch
(+ kernelsketch); < 3 minutes on an H100.
"""

from __future__ import annotations

import json
import os
import pathlib

os.environ.setdefault("KERNELSKETCH_CHECK_FINITE", "0")  # no host sync per call in timings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import kernelsketch as ks
from kernelsketch import LevConfig
from kernelsketch.attn.lev import universal_set
from kernelsketch.bench.timing import time_ms

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "results" / "attention"
SIZES = [4096, 8192, 16384, 32768, 65536, 131072]


def masked_reference(q, k, v, idx, *, is_causal, window):
    """Differentiable float64 softmax attention over the keys `idx` (+ window), causal bottom-right.

    q [B, Hq, N, D], k/v [B, Hkv, M, D] on the CPU in float64; idx [B, Hkv, S] (-1 padded).
    """
    idx = idx.cpu()
    B, Hq, N, _ = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    sel = torch.zeros(B, Hkv, M + 1, dtype=torch.bool)
    sel.scatter_(-1, torch.where(idx >= 0, idx, M), True)
    sel = sel[..., :M].repeat_interleave(Hq // Hkv, 1)[:, :, None, :]
    qpos = torch.arange(N)[:, None] + (M - N)
    kpos = torch.arange(M)[None, :]
    vis = sel | ((kpos <= qpos) & (kpos > qpos - window))
    if is_causal:
        vis = vis & (kpos <= qpos)
    kk, vv = k.repeat_interleave(Hq // Hkv, 1), v.repeat_interleave(Hq // Hkv, 1)
    s = (q @ kk.transpose(-1, -2)) * q.shape[-1] ** -0.5
    p = torch.nan_to_num(torch.softmax(s.masked_fill(~vis, float("-inf")), -1), nan=0.0)
    return p @ vv


def check_correctness():
    rows = []
    for n, hq, hkv, causal, window in [(1024, 8, 2, False, 0), (1024, 8, 2, True, 16),
                                       (4096, 4, 4, True, 0), (4096, 4, 1, False, 64)]:
        gen = torch.Generator(device="cuda").manual_seed(n + window)
        q = torch.randn(1, hq, n, 64, device="cuda", generator=gen, requires_grad=True)
        k = torch.randn(1, hkv, n, 64, device="cuda", generator=gen)
        k = (k * torch.linspace(0.5, 3, n, device="cuda")[:, None]).requires_grad_(True)
        v = torch.randn(1, hkv, n, 64, device="cuda", generator=gen, requires_grad=True)
        cfg = LevConfig(budget=32, window=window)
        out = ks.attention(q, k, v, method="lev", config=cfg, is_causal=causal)
        w = torch.randn_like(out)
        grads = torch.autograd.grad((out * w).sum(), (q, k, v))
        idx = universal_set(k.detach(), 2, budget=32)
        same_set = bool(torch.equal(idx.cpu(), universal_set(k.detach().cpu(), 2, budget=32)))
        qc, kc, vc = (t.detach().cpu().double().requires_grad_(True) for t in (q, k, v))
        ref_out = masked_reference(qc, kc, vc, idx, is_causal=causal, window=window)
        ref_grads = torch.autograd.grad((ref_out * w.cpu().double()).sum(), (qc, kc, vc))
        ref = ref_out.detach()
        def err(a, b):
            return float((a.detach().cpu().double() - b).norm() / b.norm().clamp_min(1e-30))

        row = {"n": n, "Hq": hq, "Hkv": hkv, "causal": causal, "window": window,
               "same_set_as_cpu": same_set, "out_rel_err": err(out, ref),
               **{f"grad_{name}_rel_err": err(g, r) for name, g, r in zip("qkv", grads, ref_grads)}}
        row["ok"] = row["out_rel_err"] < 1e-4 and all(row[f"grad_{c}_rel_err"] < 1e-3 for c in "qkv")
        rows.append(row)
        print(f"check n={n:5d} Hq={hq} Hkv={hkv} causal={causal!s:5} window={window:3d}: "
              f"set==cpu {same_set}, out {row['out_rel_err']:.1e}, grads "
              + ", ".join(f"{row[f'grad_{c}_rel_err']:.1e}" for c in "qkv")
              + ("  OK" if row["ok"] else "  FAIL"), flush=True)
    return rows


def cuda_time(fn, reps):
    """Median milliseconds of fn() (CUDA-synchronised) over reps runs after two warm-up runs."""
    return time_ms(fn, torch.device("cuda"), warmup=2, reps=reps)


def sdpa(backend, q, k, v, causal):
    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def fwd_bwd(fn, q, k, v):
    def run():
        out = fn(q, k, v)
        out.backward(torch.ones_like(out))
    return run


def time_size(n, causal, cfg):
    """One row of the timing table: n keys, fp16, B = 1, H = 8, D = 64."""
    reps = 10 if n <= 32768 else 5
    q, k, v = (torch.randn(1, 8, n, 64, device="cuda", dtype=torch.float16) for _ in range(3))

    def lev(a, b, c):
        return ks.attention(a, b, c, method="lev", config=cfg, is_causal=causal)

    def flash(a, b, c):
        return sdpa(SDPBackend.FLASH_ATTENTION, a, b, c, causal)

    def cudnn(a, b, c):
        return sdpa(SDPBackend.CUDNN_ATTENTION, a, b, c, causal)

    row = {"n": n, "causal": causal, "B": 1, "H": 8, "D": 64, "dtype": "float16",
           "budget": cfg.budget,
           "select_ms": cuda_time(lambda: universal_set(k, 2, budget=cfg.budget), reps),
           "lev_fwd_ms": cuda_time(lambda: lev(q, k, v), reps)}
    for name, fn in (("flash", flash), ("cudnn", cudnn)):
        try:
            row[f"{name}_fwd_ms"] = cuda_time(lambda: fn(q, k, v), reps)  # noqa: B023
        except RuntimeError as exc:  # backend unavailable for this shape / build
            row[f"{name}_fwd_ms"] = None
            row[f"{name}_error"] = str(exc).splitlines()[0][:200]
    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
    row["lev_fwd_bwd_ms"] = cuda_time(fwd_bwd(lev, qg, kg, vg), reps)
    try:
        row["flash_fwd_bwd_ms"] = cuda_time(fwd_bwd(flash, qg, kg, vg), reps)
    except RuntimeError as exc:
        row["flash_fwd_bwd_ms"] = None
        row["flash_bwd_error"] = str(exc).splitlines()[0][:200]
    for mode in ("fwd", "fwd_bwd"):
        flash_ms = row[f"flash_{mode}_ms"]
        row[f"speedup_{mode}_vs_flash"] = None if flash_ms is None else flash_ms / row[f"lev_{mode}_ms"]
    return row


def time_all():
    cfg = LevConfig(budget=32)
    print(f"{'n':>7} {'causal':>6} | {'select':>8} {'lev fwd':>8} {'flash':>8} {'cudnn':>8}"
          f" {'x flash':>7} | {'lev f+b':>8} {'flash f+b':>9} {'x':>6}  (ms)")
    rows = []
    for n in SIZES:
        for causal in (False, True):
            row = time_size(n, causal, cfg)
            rows.append(row)

            def fmt(x, width=8, digits=3):
                return f"{x:{width}.{digits}f}" if x is not None else f"{'n/a':>{width}}"

            print(f"{n:7d} {causal!s:>6} | {fmt(row['select_ms'])} {fmt(row['lev_fwd_ms'])} "
                  f"{fmt(row['flash_fwd_ms'])} {fmt(row['cudnn_fwd_ms'])} "
                  f"{fmt(row['speedup_fwd_vs_flash'], 7, 1)} | {fmt(row['lev_fwd_bwd_ms'])} "
                  f"{fmt(row['flash_fwd_bwd_ms'], 9)} {fmt(row['speedup_fwd_bwd_vs_flash'], 6, 1)}",
                  flush=True)
            torch.cuda.empty_cache()
    return rows


def main():
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/attention/gpu_lev.py needs a CUDA device")
    checks = check_correctness()
    timings = time_all()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "checks": checks, "timings": timings}
    (RESULTS / "lev_gpu.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {RESULTS / 'lev_gpu.json'}; all checks ok: {all(c['ok'] for c in checks)}")


if __name__ == "__main__":
    main()
