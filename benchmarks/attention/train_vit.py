"""Small ViT on scikit-learn's 8x8 digits, trained from scratch with softmax vs LevAttention.

Each 8x8 image is cut into 2x2 patches (16 tokens, plus a class token: 17
keys per head). Every model is trained with the same recipe and seeds; the
attention of every layer is ``kernelsketch.attention(method=...)``:

* ``softmax`` — exact attention (the baseline);
* ``lev-b`` — LevAttention with ``LevConfig(budget=b)``: each head attends
  only to the b keys of largest leverage score of its K (the paper's ViT
  setting is 32 of 197 keys, 16%; here b = 2, 4, 8 of 17);
* ``random-b`` — the same budget of keys drawn uniformly per head and batch
  (a control: is the leverage choice better than chance?);
* ``softmax→lev-b`` — the softmax-trained model evaluated with LevAttention
  (no retraining).

With ``--image-size 16`` the digits are bilinearly resized to 16x16 (64
patches, 65 keys per head of dimension 16). This matters: leverage scores of
n keys in d dimensions sum to rank <= d, so with 17 keys in 16 dimensions
they are all close to 1 and carry little information, while at n/d ~ 4 (the
paper's S/16: 197 keys, head dim 64) they can separate keys.

Prints a table (test accuracy, mean ± std over seeds, and its ratio to
softmax) and writes benchmarks/results/attention/train_vit[_16px].json and .png.
Run: ``python benchmarks/attention/train_vit.py [--epochs 30 --seeds 2]`` (CPU, minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import kernelsketch as ks
from kernelsketch import LevConfig
from kernelsketch.bench.timing import Stopwatch

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "results" / "attention"


def load_data(image_size: int = 8, seed: int = 0):
    """Digits scaled to [0, 1], bilinearly resized to image_size (8: the original)."""
    x, y = load_digits(return_X_y=True)
    x = torch.from_numpy((x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8))
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    xtr, xte, ytr, yte = train_test_split(x.numpy(), y, test_size=0.25, random_state=seed,
                                          stratify=y)
    t = torch.from_numpy
    return t(xtr), t(ytr), t(xte), t(yte)


def random_keys_attention(q, k, v, budget, generator):
    """Attention over `budget` keys drawn uniformly without replacement per (batch, head)."""
    B, H, M, _ = k.shape
    idx = torch.rand(B, H, M, generator=generator).argsort(-1)[..., :budget, None]
    return F.scaled_dot_product_attention(q, k.gather(2, idx.expand(-1, -1, -1, k.shape[-1])),
                                          v.gather(2, idx.expand(-1, -1, -1, v.shape[-1])))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x, attend):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(B, T, 3, self.heads, C // self.heads).permute(
            2, 0, 3, 1, 4)
        a = attend(q, k, v).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(a)
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(self, image_size=8, patch=2, dim=64, depth=3, heads=4, mlp=128, classes=10):
        super().__init__()
        self.patch = patch
        tokens = (image_size // patch) ** 2
        self.embed = nn.Linear(patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, img, attend):
        p = self.patch
        x = img.unfold(2, p, p).unfold(3, p, p).reshape(img.shape[0], -1, p * p)
        x = torch.cat((self.cls.expand(x.shape[0], -1, -1), self.embed(x)), 1) + self.pos
        for blk in self.blocks:
            x = blk(x, attend)
        return self.head(self.ln(x[:, 0]))


def make_attend(name: str, generator: torch.Generator):
    if name == "softmax":
        return lambda q, k, v: ks.attention(q, k, v)
    kind, budget = name.split("-")
    if kind == "lev":
        cfg = LevConfig(budget=int(budget))
        return lambda q, k, v: ks.attention(q, k, v, method="lev", config=cfg)
    return lambda q, k, v: random_keys_attention(q, k, v, int(budget), generator)


def shift_augment(x, generator):
    """Random translation by up to one pixel (zero padding)."""
    dx, dy = torch.randint(-1, 2, (2,), generator=generator).tolist()
    return torch.roll(F.pad(x, (1, 1, 1, 1)), shifts=(dy, dx), dims=(2, 3))[:, :, 1:-1, 1:-1]


def accuracy(model, x, y, attend):
    model.eval()
    with torch.no_grad():
        return float((model(x, attend).argmax(-1) == y).float().mean())


def train(name, data, seed, epochs, model_args, batch=128, lr=3e-3):
    xtr, ytr, xte, yte = data
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ViT(**model_args)
    attend = make_attend(name, gen)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(xtr) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses = []
    watch = Stopwatch().start()  # wall time of the training loop
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        total = 0.0
        for i in range(0, len(xtr), batch):
            b = perm[i:i + batch]
            loss = F.cross_entropy(model(shift_augment(xtr[b], gen), attend), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
        losses.append(total / len(xtr))
    seconds = watch.stop()
    eval_attend = make_attend(name, torch.Generator().manual_seed(10_000 + seed))
    return model, {"test_acc": accuracy(model, xte, yte, eval_attend), "train_loss": losses,
                   "seconds": seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--budgets", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--random-budgets", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=8, choices=(8, 16),
                    help="16: digits resized to 16x16, 65 keys per head (n/d ~ 4 as in the paper)")
    ap.add_argument("--depth", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(args.image_size)
    model_args = {"image_size": args.image_size, "depth": args.depth}
    tokens = (args.image_size // 2) ** 2 + 1
    tag = "" if args.image_size == 8 else f"_{args.image_size}px"
    names = (["softmax"] + [f"lev-{b}" for b in args.budgets]
             + [f"random-{b}" for b in args.random_budgets])
    runs = {n: [] for n in names}
    transfer = {f"softmax->lev-{b}": [] for b in args.budgets}
    for seed in range(args.seeds):
        for name in names:
            model, res = train(name, data, seed, args.epochs, model_args)
            runs[name].append(res)
            print(f"seed {seed} {name:>10}: test acc {res['test_acc']:.4f} ({res['seconds']:.0f} s)",
                  flush=True)
            if name == "softmax":
                for b in args.budgets:
                    acc = accuracy(model, data[2], data[3], make_attend(f"lev-{b}", None))
                    transfer[f"softmax->lev-{b}"].append({"test_acc": acc})
    summary = {}
    base = np.mean([r["test_acc"] for r in runs["softmax"]])
    print(f"\n{'model':>16} | {'test acc':>15} | {'/ softmax':>9} | {'train s':>7}")
    for name, rs in list(runs.items()) + list(transfer.items()):
        accs = np.array([r["test_acc"] for r in rs])
        secs = np.mean([r.get("seconds", 0.0) for r in rs])
        summary[name] = {"mean": float(accs.mean()), "std": float(accs.std()),
                         "ratio": float(accs.mean() / base), "accs": accs.tolist(),
                         "train_seconds": float(secs)}
        print(f"{name:>16} | {accs.mean():.4f} ± {accs.std():.4f} | {accs.mean() / base:9.3f} | "
              f"{secs:7.1f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "setup": {"dataset": "sklearn digits 8x8 (1347 train / 450 test)",
                  "image_size": args.image_size, "patch": 2, "keys_per_head": tokens,
                  "dim": 64, "head_dim": 16, "depth": args.depth, "heads": 4,
                  "epochs": args.epochs,
                  "seeds": args.seeds, "device": "cpu", "torch": torch.__version__,
                  "machine": platform.processor() or platform.machine()},
        "summary": summary,
        "train_loss": {n: [r["train_loss"] for r in rs] for n, rs in runs.items()},
    }
    (RESULTS / f"train_vit{tag}.json").write_text(json.dumps(out, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, marker, budgets in (("lev", "o", args.budgets), ("random", "s", args.random_budgets),
                                  ("softmax->lev", "^", args.budgets)):
        means = [summary[f"{kind}-{b}"]["mean"] for b in budgets]
        stds = [summary[f"{kind}-{b}"]["std"] for b in budgets]
        a1.errorbar(budgets, means, yerr=stds, marker=marker, label=kind, capsize=3)
    a1.axhline(base, color="k", ls="--", label=f"softmax ({tokens} keys)")
    a1.axhline(0.9 * base, color="gray", ls=":", label="90% of softmax")
    a1.set_xlabel(f"keys per head (of {tokens})")
    a1.set_ylabel("test accuracy")
    a1.legend()
    for name in ["softmax"] + [f"lev-{b}" for b in args.budgets]:
        a2.plot(np.mean(out["train_loss"][name], axis=0), label=name)
    a2.set_yscale("log")
    a2.set_xlabel("epoch")
    a2.set_ylabel("train loss")
    a2.legend()
    fig.suptitle(f"ViT on digits ({args.image_size}x{args.image_size}, {tokens} keys): softmax vs "
                 "LevAttention (trained from scratch)")
    fig.tight_layout()
    fig.savefig(RESULTS / f"train_vit{tag}.png", dpi=110)


if __name__ == "__main__":
    main()
