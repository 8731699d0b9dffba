"""``kernelsketch demo``: every registered attention method on a built-in default, on CPU.

Runs each method at a few lengths on random inputs and on inputs with planted
heavy entries (each query close to one key), prints a table of output error
and speed-up against exact attention measured in the same run, and writes a
PNG of error vs speed-up plus the JSON next to it. Methods appear here as
soon as they are registered. Configs are the method defaults, as a user
gets them with no config (issue 16); at the demo lengths (4096 and 8192
tokens) every method runs its sketch (non-causal: more keys than hyper's and
kde's ``min_seq_len``; causal: their recursion approximates its first levels).
A method that falls back to exact attention says so (``ExactFallbackWarning``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from .attn import available_methods, get_method
from .bench.attention import Variant, format_table, run


def demo_variants() -> list[Variant]:
    """Every registered sketched method with its default config."""
    return [Variant(name, name, get_method(name).config_cls()) for name in available_methods()
            if name != "exact"]


class ProgressBar:
    """A one-line text progress bar on stderr."""

    def __init__(self, total: int, width: int = 30):
        self.total, self.width, self.done, self.t0 = total, width, 0, time.time()

    def __call__(self, message: str) -> None:
        if message.startswith("  "):
            return
        self.done += 1
        filled = self.width * self.done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        sys.stderr.write(f"\r[{bar}] {self.done}/{self.total} {time.time() - self.t0:5.1f}s "
                         f"{message.split('] ', 1)[-1][:40]:<40}")
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def plot(results: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, res in zip(axes[0], results):
        for label in sorted({r["label"] for r in res["rows"] if r["rel_error"] is not None}):
            pts = [r for r in res["rows"] if r["label"] == label]
            for kind, marker in (("random", "o"), ("planted", "^")):
                sel = [r for r in pts if r["inputs"] == kind]
                ax.scatter([r["speedup_fwd"] for r in sel], [r["rel_error"] for r in sel],
                           marker=marker, label=f"{label} ({kind})")
                for r in sel:
                    ax.annotate(str(r["n"]), (r["speedup_fwd"], r["rel_error"]), fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("speed-up vs exact SDPA (forward, same run)")
        ax.set_ylabel("relative output error")
        ax.set_title(f"{'causal' if res['causal'] else 'non-causal'}, {res['device']}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(out_dir: str = "results/demo", ns=(4096, 8192)) -> int:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    variants = demo_variants()
    out = Path(out_dir)
    results = []
    print(f"kernelsketch demo: methods {[v.label for v in variants]} vs exact, n = {list(ns)}, CPU",
          flush=True)
    for causal in (False, True):
        bar = ProgressBar(len(ns) * 2 * (len(variants) + 1))
        res = run(device="cpu", ns=ns, causal=causal, dtype=torch.float32, heads=4, head_dim=64,
                  variants=variants, inputs=("random", "planted"), backward=False, reps=2,
                  out_dir=out, tag="demo", progress=bar)
        print(format_table(res), flush=True)
        results.append(res)
    png = out / "demo_error_vs_speedup.png"
    if plot(results, png):
        print(f"plot written to {png.resolve()}")
    print(f"results folder: {out.resolve()}")
    return 0
