"""Overhead of config="auto" (issue 16): the chooser's time against the attention call it
configures and SDPA, and the error it achieves against its target.

    python benchmarks/attention/auto_budget.py   # writes benchmarks/results/attention/auto_budget.json

CPU, 2 threads, B = 1, Hq = 9, Hkv = 3, d = 64, n = 8192, float32; hyper's
default config with the sample size from ``ks.attn.choose_budget(error=target)``
(causal target 0.1, non-causal 0.3); process CPU time, median of 2 after a
warm-up; achieved error: normalised spectral error on 256 query rows.
"""

import json
from pathlib import Path

import torch

import kernelsketch as ks
from kernelsketch.attn.common.metrics import spectral_error
from kernelsketch.bench.attention import make_inputs
from kernelsketch.bench.timing import time_ms

OUT = Path(__file__).resolve().parents[1] / "results" / "attention" / "auto_budget.json"


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    for causal in (True, False):
        for inputs in ("random", "planted"):
            q, k, v = make_inputs(inputs, 1, 9, 8192, 64, torch.float32, "cpu", seed=8192,
                                  kv_heads=3)
            target = 0.1 if causal else 0.3

            def choose(q=q, k=k, v=v, causal=causal, target=target):
                return ks.attn.choose_budget(q, k, v, method="hyper", error=target,
                                             is_causal=causal,
                                             generator=torch.Generator().manual_seed(0))

            def attend(config, q=q, k=k, v=v, causal=causal):
                return ks.attention(q, k, v, method="hyper", config=config, is_causal=causal,
                                    generator=torch.Generator().manual_seed(1))

            choice = choose()
            row = {"causal": causal, "inputs": inputs, "target": target,
                   "sample_size": choice.config.sample_size,
                   "estimate": choice.estimated_error,
                   "achieved": float(spectral_error(
                       attend(choice.config), q, k, v, is_causal=causal, num_rows=256,
                       generator=torch.Generator().manual_seed(0)).mean()),
                   "choose_ms": time_ms(choose, clock="process", reps=2),
                   "attention_ms": time_ms(lambda c=choice.config: attend(c), clock="process",
                                           reps=2),
                   "sdpa_ms": time_ms(lambda q=q, k=k, v=v, causal=causal: ks.attention(
                       q, k, v, is_causal=causal), clock="process", reps=2)}
            print(row, flush=True)
            rows.append(row)
    OUT.write_text(json.dumps({"setup": __doc__.split("\n\n")[2], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
