"""Train a small byte-level GPT with softmax, exact polynomial and PolySketch attention.

Data: CPython's ``pydoc_data.topics`` (about 465k characters of English
documentation shipped with every Python install; no download), UTF-8 bytes,
the last 10% held out for validation. Every attention variant trains the same
model (same initialisation, data order, optimiser and number of steps); only
the attention function differs:

* ``softmax``      : exact softmax attention (PyTorch SDPA), causal;
* ``softmax-qkln`` : the same over layer-normalised q, k (no affine), a control
  for the q/k normalisation that polynomial attention needs;
* ``polynomial``   : exact degree-4 polynomial attention, q/k layer-normalised
  (no affine parameters), scores scaled by 1/sqrt(head dim) (the library default);
* ``polynomial-pP``: the same with degree P (e.g. ``polynomial-p8``);
* ``polynomial-paperln``: degree 4 with the q/k normalisation of the paper's
  public code: one learnable (affine) layer norm shared by q and k, and
  unscaled scores q·k (so the ``1`` of the denominator is negligible);
* ``polysketch-rR``: PolySketch degree 4, Gaussian sketch of size R, exact
  polynomial weights inside blocks of ``--block-size`` tokens (so the sketch is
  used for every pair more than one block apart);
* ``polysketch-learned-rR`` (``--learned``): the learned sketch started at the
  Gaussian one; ``polysketch-learned-mlp-rR``: the paper's learned MLP branches.

Prints a table and writes ``benchmarks/results/attention/<name>.json`` and ``<name>.png``
(validation loss curves; ``--name`` defaults to ``train_lm``), and one
``<name>_<kind>.json`` per variant, rewritten after every evaluation (so
variants can train in parallel processes with ``--kinds``, and ``--report``
merges them).

Usage: ``python benchmarks/attention/train_lm.py [--steps 150] [--device cpu|cuda]``.
The defaults are a CPU run of a few minutes per variant (a 0.6M-parameter model);
pass larger ``--dim/--layers/--context/--steps`` on a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import kernelsketch as ks
from kernelsketch import PolynomialConfig, PolySketchAttention, PolySketchConfig
from kernelsketch.bench.timing import Stopwatch

RESULTS = Path(__file__).resolve().parents[1] / "results" / "attention"


def load_bytes() -> torch.Tensor:
    """All pydoc topics as one uint8 tensor (deterministic order)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics))
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


class Attention(nn.Module):
    """Causal self-attention with a pluggable attention function."""

    def __init__(self, dim: int, heads: int, kind: str, sketch_size: int, block_size: int,
                 seed: int) -> None:
        super().__init__()
        self.heads, self.kind = heads, kind
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        head_dim = dim // heads
        if kind == "polynomial-paperln":
            self.qk_norm = nn.LayerNorm(head_dim)  # one affine layer norm for q and k
        if kind.startswith("polysketch"):
            sketch = ("learned-mlp" if "learned-mlp" in kind
                      else "learned" if "learned" in kind else "gaussian")
            cfg = PolySketchConfig(sketch_size=sketch_size, block_size=block_size, sketch=sketch)
            # Same q/k normalisation (no affine) as the functional polynomial method.
            self.poly = PolySketchAttention(head_dim, cfg, seed=seed, norm_affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        if self.kind == "softmax":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.kind == "softmax-qkln":
            q, k = F.layer_norm(q, q.shape[-1:]), F.layer_norm(k, k.shape[-1:])
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.kind == "polynomial-paperln":
            y = ks.attention(self.qk_norm(q), self.qk_norm(k), v, method="polynomial",
                             is_causal=True, scale=1.0, config=PolynomialConfig(normalize=False))
        elif self.kind.startswith("polynomial"):
            degree = int(self.kind.split("-p")[1]) if "-p" in self.kind else 4
            y = ks.attention(q, k, v, method="polynomial", is_causal=True,
                             config=PolynomialConfig(degree=degree))
        else:
            y = self.poly(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, dim, heads, **attn):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, **attn)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Byte-level decoder-only transformer (pre-norm, learned positions, tied embeddings)."""

    def __init__(self, *, dim, layers, heads, context, kind, sketch_size, block_size):
        super().__init__()
        self.tok = nn.Embedding(256, dim)
        self.pos = nn.Parameter(torch.zeros(context, dim))
        self.blocks = nn.ModuleList(
            Block(dim, heads, kind=kind, sketch_size=sketch_size, block_size=block_size, seed=i)
            for i in range(layers))
        self.ln = nn.LayerNorm(dim)
        for m in self.modules():  # GPT-2 initialisation
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx):
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return self.ln(x) @ self.tok.weight.T


def batches(data, batch, context, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(len(data) - context - 1, (batch,), generator=g)
        idx = starts[:, None] + torch.arange(context + 1)
        yield data[idx]


@torch.no_grad()
def evaluate(model, val, context, device, n_batches=4, batch=16):
    model.eval()
    losses = []
    for xy in batches(val, batch, context, n_batches, seed=12345):
        xy = xy.to(device)
        logits = model(xy[:, :-1])
        losses.append(F.cross_entropy(logits.flatten(0, 1), xy[:, 1:].flatten()).item())
    model.train()
    return sum(losses) / len(losses)


def save_run(run, meta):
    """benchmarks/results/attention/<name>_<kind>.json, rewritten after every evaluation."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{meta['name']}_{run['kind']}.json").write_text(
        json.dumps({"config": meta, "run": run}, indent=1))


def train(kind, args, train_data, val_data, meta):
    torch.manual_seed(args.seed)  # identical initialisation of the shared weights
    model = GPT(dim=args.dim, layers=args.layers, heads=args.heads, context=args.context,
                kind=kind, sketch_size=args.sketch_size.get(kind, 32),
                block_size=args.block_size).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 30) * 0.5 * (1 + math.cos(math.pi * s / args.steps)))
    curve, watch = [], Stopwatch().start()  # wall time of the whole training run
    for step, xy in enumerate(batches(train_data, args.batch, args.context, args.steps,
                                         seed=args.seed + 1)):
        xy = xy.to(args.device)
        logits = model(xy[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), xy[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            curve.append((step + 1, evaluate(model, val_data, args.context, args.device),
                          loss.item()))
            print(f"  {kind:24s} step {step + 1:4d} train {loss.item():.3f} "
                  f"val {curve[-1][1]:.3f}", flush=True)
            run = {"kind": kind, "params": sum(p.numel() for p in model.parameters()),
                       "seconds": watch.elapsed(), "steps_done": step + 1,
                       "steps": [c[0] for c in curve], "val_loss": [c[1] for c in curve],
                       "train_loss": [c[2] for c in curve]}
            save_run(run, meta)
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--learned", action="store_true", help="also train the learned sketch (r=32)")
    ap.add_argument("--kinds", default="softmax,polynomial,polysketch-r32,polysketch-r64",
                    help="comma-separated variants to train (one process may train a subset; "
                         "each writes train_lm_<kind>.json)")
    ap.add_argument("--name", default="train_lm", help="prefix of the result files")
    ap.add_argument("--seed", type=int, default=0,
                    help="initialisation seed (the data order uses seed + 1)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--report", action="store_true",
                    help="train nothing: merge the train_lm_<kind>.json files of --kinds")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = args.kinds.split(",") + (["polysketch-learned-r32"] if args.learned else [])
    args.sketch_size = {k: int(k.rsplit("-r", 1)[1]) for k in kinds if "-r" in k}
    data = load_bytes()
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]
    meta = {k: getattr(args, k) for k in ("steps", "batch", "context", "block_size", "dim",
                                          "layers", "heads", "lr", "device", "name", "seed")}
    meta.update(torch=torch.__version__, data="pydoc_data.topics (UTF-8 bytes)",
                data_bytes=len(data))
    if args.report:
        runs = [json.loads((RESULTS / f"{args.name}_{k}.json").read_text())["run"] for k in kinds]
    else:
        print(f"pydoc_data.topics: {len(data)} bytes ({split} train, {len(data) - split} val); "
              f"{args.steps} steps x {args.batch} x {args.context} tokens per variant")
        runs = [train(kind, args, train_data, val_data, meta) for kind in kinds]

    print(f"\n{'attention':26s}{'params':>10s}{'steps':>7s}{'final val loss':>16s}"
          f"{'val ppl':>10s}{'bits/byte':>11s}{'seconds':>9s}")
    for r in runs:
        v = r["val_loss"][-1]
        print(f"{r['kind']:26s}{r['params']:>10d}{r['steps_done']:>7d}{v:>16.4f}"
              f"{math.exp(v):>10.3f}{v / math.log(2):>11.4f}{r['seconds']:>9.1f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"config": meta, "runs": runs}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        ax.plot(r["steps"], r["val_loss"], label=r["kind"], marker=".")
    ax.set(xlabel="step", ylabel="validation loss (nats/byte)",
           title=f"byte-level LM on pydoc topics, context {args.context}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.name}.png", dpi=120)
    print(f"wrote {RESULTS / args.name}.json and {args.name}.png")


if __name__ == "__main__":
    main()
