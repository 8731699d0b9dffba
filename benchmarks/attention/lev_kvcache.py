"""KV-cache compression for decoding: LevKVCache vs simple eviction policies at equal memory.

A stream of T tokens (one key/value head group: Hkv = 4, Hq = 8, D = 64,
float32) is prefilled for T/2 tokens and then decoded one token at a time;
at each step the newest query attends to the compressed cache and the output
is compared with exact causal attention over ALL tokens so far (relative
Frobenius error over the decoded steps). Every policy keeps the same number
of tokens per head, C = window + kept evicted tokens:

* ``lev`` — :class:`kernelsketch.attn.lev.LevKVCache`: a recent
  window of 32 plus the C - 32 evicted tokens of largest leverage score
  (streaming, d x d Gram, evicting in blocks of 16); ``lev_r0.1`` and
  ``lev_r1`` use relative ridge 0.1 and 1 (ridge scores interpolate between
  leverage scores and, as ridge grows, squared key norms);
* ``window`` — the last C tokens only;
* ``random`` — window of 32 plus C - 32 evicted tokens kept by reservoir
  sampling (uniform over the evicted tokens);
* ``key_norm`` — window of 32 plus the C - 32 evicted tokens of largest ‖k‖.

Streams: ``gaussian`` (i.i.d. keys and queries: diffuse attention, the hard
case for any eviction) and ``structured`` (keys from a rank-8 latent space
plus noise, 2% of tokens with a 4x larger latent component, queries from the
same latent space; attention concentrates on a few directions).

Prints a table, writes benchmarks/results/attention/lev_kvcache.json. CPU, < 1 minute:
``python benchmarks/attention/lev_kvcache.py``.
"""

from __future__ import annotations

import json
import pathlib

import torch

from kernelsketch.attn.lev import LevKVCache
from kernelsketch.bench.timing import Stopwatch

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "results" / "attention"
WINDOW = 32
LEV_VARIANTS = (("lev", 0.0), ("lev_r0.1", 0.1), ("lev_r1", 1.0))
COLUMNS = [name for name, _ in LEV_VARIANTS] + ["window", "random", "key_norm"]


def stream(kind: str, T: int, gen: torch.Generator):
    Hkv, Hq, D = 4, 8, 64
    if kind == "gaussian":
        q = torch.randn(1, Hq, T, D, generator=gen)
        k = torch.randn(1, Hkv, T, D, generator=gen)
    else:
        basis = torch.randn(Hkv, 8, D, generator=gen)
        zk = torch.randn(1, Hkv, T, 8, generator=gen)
        anchors = torch.rand(1, Hkv, T, 1, generator=gen) < 0.02
        zk = zk * torch.where(anchors, 4.0, 1.0)
        k = zk @ basis + 0.3 * torch.randn(1, Hkv, T, D, generator=gen)
        zq = torch.randn(1, Hq, T, 8, generator=gen)
        q = zq @ basis.repeat_interleave(Hq // Hkv, 0) * 0.5
    v = torch.randn(1, Hkv, T, D, generator=gen)
    return q, k, v


def exact_step(q_t, k, v):
    G = q_t.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    return torch.softmax(q_t @ kk.transpose(-1, -2) / k.shape[-1] ** 0.5, -1) @ vv


def baseline_cache_step(policy, q_t, k, v, t, capacity, state, gen):
    """Attention of query t over the tokens a simple policy keeps (recomputed from scratch)."""
    T_seen = t + 1
    if policy == "window" or T_seen <= capacity:
        keep = torch.arange(max(0, T_seen - capacity), T_seen).expand(k.shape[1], -1)
    else:
        evicted = T_seen - WINDOW
        budget = capacity - WINDOW
        if policy == "random":  # reservoir sampling over the evicted prefix, per head
            res = state.setdefault("reservoir", torch.arange(budget).expand(k.shape[1], -1).clone())
            for j in range(state.get("seen", budget), evicted):
                slot = torch.randint(0, j + 1, (k.shape[1],), generator=gen)
                hit = slot < budget
                res[hit, slot[hit]] = j
            state["seen"] = evicted
            chosen = res
        else:  # key_norm
            chosen = k[0, :, :evicted].norm(dim=-1).topk(budget, dim=-1).indices
        recent = torch.arange(evicted, T_seen).expand(k.shape[1], -1)
        keep = torch.cat((chosen, recent), -1)
    ks_ = k[0].gather(1, keep[..., None].expand(-1, -1, k.shape[-1]))[None]
    vs_ = v[0].gather(1, keep[..., None].expand(-1, -1, v.shape[-1]))[None]
    return exact_step(q_t, ks_, vs_)


def run(kind: str, T: int, capacities, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = stream(kind, T, gen)
    start = T // 2
    ref = torch.cat([exact_step(q[:, :, t:t + 1], k[:, :, :t + 1], v[:, :, :t + 1])
                     for t in range(start, T)], 2)
    rows = []
    for cap in capacities:
        row = {"stream": kind, "T": T, "capacity": cap}
        for name, ridge in LEV_VARIANTS:
            with Stopwatch() as watch:
                cache = LevKVCache(budget=cap - WINDOW, window=WINDOW, ridge=ridge)
                cache.append(k[:, :, :start], v[:, :, :start])
                outs = [cache.append(k[:, :, t:t + 1], v[:, :, t:t + 1]).attend(q[:, :, t:t + 1])
                        for t in range(start, T)]
            row[f"{name}_seconds"] = watch.seconds
            row[name] = _rel(torch.cat(outs, 2), ref)
        for policy in ("window", "random", "key_norm"):
            state, pgen = {}, torch.Generator().manual_seed(seed + 1)
            outs = [baseline_cache_step(policy, q[:, :, t:t + 1], k, v, t, cap, state, pgen)
                    for t in range(start, T)]
            row[policy] = _rel(torch.cat(outs, 2), ref)
        rows.append(row)
        print(f"{kind:>10} {T:6d} {cap:5d} | "
              + " ".join(f"{row[c]:8.4f}" for c in COLUMNS), flush=True)
    return rows


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def main():
    torch.set_num_threads(1)
    print(f"{'stream':>10} {'T':>6} {'C':>5} | " + " ".join(f"{c:>8}" for c in COLUMNS)
          + "   (relative error of decoded outputs vs full attention)")
    rows = []
    for kind in ("structured", "gaussian"):
        rows += run(kind, 1024, (64, 128, 256))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"setup": {"Hkv": 4, "Hq": 8, "D": 64, "dtype": "float32", "window": WINDOW,
                     "evict_block": 16,
                     "prefill": "T/2", "device": "cpu", "torch": torch.__version__},
           "rows": rows}
    (RESULTS / "lev_kvcache.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
