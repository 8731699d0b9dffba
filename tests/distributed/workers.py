"""Jobs run on every rank of a gloo group by the distributed tests (see launch.py)."""

import warnings

import torch

import kernelsketch as ks
from kernelsketch import HyperConfig, KDEConfig
from kernelsketch.attn.common.exact import ExactFallbackWarning, NoSpeedupWarning
from kernelsketch.attn.lev import LevConfig
from kernelsketch.attn.polysketch.config import PolySketchConfig
from kernelsketch.distributed import context_parallel_attention, count_bytes

# (B, Hq, Hkv, N, M, D, Dv): the whole sequence; every rank holds N/P queries and M/P keys.
MHA = (1, 2, 2, 48, 48, 8, 8)
GQA = (2, 4, 2, 48, 48, 8, 6)  # GQA with Dv != D
CROSS = (1, 2, 1, 24, 56, 8, 8)  # cross-attention, more keys than queries
CROSS_FEW = (1, 2, 1, 56, 24, 8, 8)  # fewer keys than queries (causal: early rows see none)
ODD = (1, 2, 2, 60, 60, 8, 8)  # odd shard length at P = 4 (no zig-zag)
SMALL_D = (1, 2, 2, 48, 48, 4, 4)  # p = 4: 10 symmetric features, fewer than the keys

# (name, method, config, shapes that apply)
EQUALITY = [
    ("exact", "exact", None, (MHA, GQA, CROSS, CROSS_FEW, ODD)),
    ("poly-halo", "polysketch", PolySketchConfig(block_size=5, sketch_size=4), (MHA, GQA, CROSS)),
    ("poly-aligned", "polysketch", PolySketchConfig(block_size=6, sketch_size=8), (MHA, GQA)),
    ("poly-long-block", "polysketch", PolySketchConfig(block_size=16, sketch_size=2), (MHA, ODD)),
    ("poly-sketched-local", "polysketch",
     PolySketchConfig(block_size=7, sketch_size=4, exact_local=False), (MHA,)),
    ("poly-degree2", "polysketch", PolySketchConfig(degree=2, block_size=8), (GQA, CROSS)),
    ("lev-budget", "lev", LevConfig(budget=6), (MHA, GQA, CROSS, CROSS_FEW)),
    ("lev-window", "lev", LevConfig(budget=5, window=7), (MHA, GQA)),
    ("lev-long-window", "lev", LevConfig(budget=4, ridge=0.1, window=20), (MHA, ODD)),
    ("lev-eps", "lev", LevConfig(eps=0.15), (MHA, GQA, CROSS)),
    ("lev-power", "lev", LevConfig(budget=6, kind="power"), (GQA,)),
    ("lev-full-budget", "lev", LevConfig(budget=48), (MHA,)),
    ("lev-p4", "lev", LevConfig(p=4, budget=6), (SMALL_D,)),
    ("lev-p4-sketch", "lev", LevConfig(p=4, budget=6, sketch_size=8, ridge=0.01), (MHA,)),
    # the first keys join the set (sink within rank 0's shard, and across shards)
    ("lev-sink", "lev", LevConfig(budget=4, window=5, sink=3), (MHA, GQA)),
    ("lev-long-sink", "lev", LevConfig(budget=4, sink=15), (MHA,)),
    ("lev-eps-sink", "lev", LevConfig(eps=0.15, sink=2), (GQA, CROSS)),
    # blocks covering every pair: the sortLSH routing reduces to exact attention
    ("hyper-full", "hyper", HyperConfig.full_budget(56), (MHA, GQA, CROSS)),
    ("kde-full", "kde", KDEConfig.full_budget(56), (MHA, CROSS_FEW)),
]

# Non-causal HyperAttention with the generator the distributed call derives: the same
# hash, blocks and samples as the single-process torch path (attn/hyper/naive.py).
SAME_DRAWS = [
    ("blocks-only", HyperConfig(block_size=8, sample_size=0, lsh_bits=3, min_seq_len=0,
                                sink=0)),
    ("blocks-samples", HyperConfig(block_size=12, sample_size=10, lsh_bits=5, min_seq_len=0,
                                   sink=0)),
    ("two-rounds", HyperConfig(block_size=8, sample_size=6, lsh_bits=4, min_seq_len=0,
                               hash_rounds=2, sink=0)),
    # always-exact first keys, within rank 0's shard and across several shards
    ("sink", HyperConfig(block_size=8, sample_size=6, lsh_bits=4, min_seq_len=0, sink=5)),
    ("long-sink", HyperConfig(block_size=8, sample_size=6, lsh_bits=4, min_seq_len=0, sink=17)),
]

# Forward bytes at two lengths and two head dims (B = 1, H = 2, P | N).
SCALING = [
    ("exact", None),
    ("lev", LevConfig(budget=8)),
    ("polysketch", PolySketchConfig(block_size=8, sketch_size=4)),
    ("hyper", HyperConfig(block_size=8, sample_size=8, lsh_bits=4, min_seq_len=0, sink=0,
                          window=0)),
]


def equality_cases():
    """Every (case id, method, config, causal, shape) of the equality test."""
    cases = []
    for name, method, config, shapes in EQUALITY:
        for shape in shapes:
            for causal in (False, True):
                window = getattr(config, "window", 0)
                if causal and shape[3] != shape[4] and not (
                        method == "exact" or (method == "lev" and not window)):
                    continue
                cases.append((f"{name}-{'x'.join(map(str, shape))}-{'causal' if causal else 'full'}",
                              method, config, causal, shape))
    return cases


def _inputs(shape, seed):
    B, Hq, Hkv, N, M, D, Dv = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, N, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, M, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, M, Dv, generator=g, dtype=torch.float64)
    d_out = torch.randn(B, Hq, N, Dv, generator=g, dtype=torch.float64)
    d_lse = torch.randn(B, Hq, N, generator=g, dtype=torch.float64)
    return q, k, v, d_out, d_lse


def _offset(q, k, seed, strength=3.0):
    """q and k plus a common vector each (opposite directions, norm ``strength``): the
    shape of a pretrained LM's queries and keys, for which the hash centres its rows."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(q.shape[-1], generator=g, dtype=q.dtype)
    c = strength * c / c.norm()
    return q + c, k - 0.7 * c


# (shape, offset strength) of SAME_DRAWS: the offset makes each problem's mean row large,
# so the all-reduced means that centre the hash must be the single process's.
SAME_DRAWS_INPUTS = [(MHA, 0.0), (GQA, 0.0), (CROSS, 0.0), (GQA, 3.0)]


def same_draws_id(name, shape, offset):
    return f"{name}-{'x'.join(map(str, shape))}{'-offset' if offset else ''}"


def _max_abs(x):
    return x.abs().max().item() if x.numel() else 0.0


def _loss(out, lse, d_out, d_lse):
    return (out * d_out).sum() + (torch.where(torch.isfinite(lse), lse, 0.0) * d_lse).sum()


def scaling_job(rank, world):
    """Forward bytes by collective for SCALING x causal x N in (64, 128) x D in (8, 16)."""
    results = {}
    for i, (method, config) in enumerate(SCALING):
        for causal in (False, True):
            for N in (64, 128):
                for D in (8, 16):
                    q, k, v, _, _ = _inputs((1, 2, 2, N, N, D, D), seed=2000 + i)
                    n = N // world
                    mine = [t[:, :, rank * n:(rank + 1) * n] for t in (q, k, v)]
                    with count_bytes() as fwd:
                        context_parallel_attention(*mine, method=method, is_causal=causal,
                                                   config=config,
                                                   generator=torch.Generator().manual_seed(i))
                    results[method, causal, N, D] = dict(fwd.by_op)
    return results


def same_draws_job(rank, world):
    """Per SAME_DRAWS case and shape: max |distributed - hyper_noncausal(derived generator)|
    of out, lse and the gradients on this rank's rows."""
    from kernelsketch.attn.hyper.naive import hyper_noncausal
    from kernelsketch.distributed.sortlsh import _derived

    results = {}
    for i, (name, config) in enumerate(SAME_DRAWS):
        for shape, offset in SAME_DRAWS_INPUTS:
            q, k, v, d_out, d_lse = _inputs(shape, seed=3000 + i)
            if offset:
                q, k = _offset(q, k, 3100 + i, offset)
            seed = int(torch.randint(2**62, (), generator=torch.Generator().manual_seed(i)))
            whole = [t.clone().requires_grad_() for t in (q, k, v)]
            ref, ref_lse = hyper_noncausal(*whole, shape[5] ** -0.5, config,
                                           _derived(seed, 1, device="cpu"), config.sink)
            _loss(ref, ref_lse, d_out, d_lse).backward()
            n, m = shape[3] // world, shape[4] // world
            rows, keys = slice(rank * n, (rank + 1) * n), slice(rank * m, (rank + 1) * m)
            mine = [t[:, :, s].clone().requires_grad_() for t, s in
                    ((q, rows), (k, keys), (v, keys))]
            out, lse = context_parallel_attention(
                *mine, method="hyper", config=config, return_lse=True,
                generator=torch.Generator().manual_seed(i))
            _loss(out, lse, d_out[:, :, rows], d_lse[:, :, rows]).backward()
            results[same_draws_id(name, shape, offset)] = {
                "out": _max_abs(out - ref[:, :, rows]), "lse": _max_abs(lse - ref_lse[:, :, rows]),
                "dq": _max_abs(mine[0].grad - whole[0].grad[:, :, rows]),
                "dk": _max_abs(mine[1].grad - whole[1].grad[:, :, keys]),
                "dv": _max_abs(mine[2].grad - whole[2].grad[:, :, keys]),
            }
    return results


def errors_job(rank, world):
    """(exception type, message) of calls that every rank must reject alike."""
    q, k, v, _, _ = _inputs((1, 2, 2, 8 * world, 8 * world, 8, 8), seed=4000)
    mine = [t[:, :, rank * 8:(rank + 1) * 8] for t in (q, k, v)]
    kw = {"method": "exact"}
    calls = {
        "unequal-shards": (mine[0][:, :, :8 - (rank % 2)], *mine[1:]),
        "dtype": (*(t.float() if rank == 0 else t for t in mine),),
        "generator": (*mine, {"method": "polysketch",
                              "generator": torch.Generator().manual_seed(rank)}),
        "causal-flag": (*mine, {"is_causal": rank == 0}),
        "method": (*mine, {"method": "polynomial"}),
        "causal-cross": (mine[0], k[:, :, :4], v[:, :, :4],
                         {"method": "polysketch", "is_causal": True,
                          "generator": torch.Generator().manual_seed(0)}),
        "lsh-bits": (*mine, {"method": "hyper", "config": HyperConfig(lsh_bits=20),
                             "generator": torch.Generator().manual_seed(0)}),
        "window-cross": (mine[0], k[:, :, :4], v[:, :, :4],
                         {"method": "lev", "config": LevConfig(budget=2, window=3)}),
        "auto": (*mine, {"method": "hyper", "config": "auto"}),
    }
    results = {}
    for name, args in calls.items():
        options = {**kw, **(args[-1] if isinstance(args[-1], dict) else {})}
        tensors = args[:-1] if isinstance(args[-1], dict) else args
        try:
            context_parallel_attention(*tensors, **options)
            results[name] = None
        except (TypeError, ValueError) as err:
            results[name] = (type(err).__name__, str(err))
    # the group still works after the errors
    results["after"] = _max_abs(context_parallel_attention(*mine, method="exact")
                                - ks.attention(q, k, v)[:, :, rank * 8:(rank + 1) * 8])
    return results


LOW_PRECISION = [
    ("exact", None), ("lev", LevConfig(budget=6, window=4, sink=2)),
    ("polysketch", PolySketchConfig(block_size=5, sketch_size=4)),
    ("hyper", HyperConfig(block_size=8, sample_size=8, lsh_bits=3, min_seq_len=0, sink=2,
                          window=4)),
    ("kde", KDEConfig(block_size=8, sample_size=8, kde_samples=8, lsh_bits=3, min_seq_len=0,
                      sink=2, window=4)),
]


def low_precision_job(rank, world):
    """float32 and bfloat16 shards: max |distributed - single process| (exact, lev,
    polysketch) or whether the output is finite (hyper, kde), per method, dtype, causal."""
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v, _, _ = (t.to(dtype) for t in _inputs(MHA, seed=5000))
        n = MHA[3] // world
        rows = slice(rank * n, (rank + 1) * n)
        for method, config in LOW_PRECISION:
            for causal in (False, True):
                out = context_parallel_attention(
                    q[:, :, rows], k[:, :, rows], v[:, :, rows], method=method, config=config,
                    is_causal=causal, generator=torch.Generator().manual_seed(1))
                ref = ks.attention(q, k, v, method=method, config=config, is_causal=causal,
                                   generator=torch.Generator().manual_seed(1))[:, :, rows]
                results[method, str(dtype), causal] = {
                    "dtype": str(out.dtype), "finite": bool(torch.isfinite(out).all()),
                    "diff": _max_abs(out.double() - ref.double())}
    return results


def attention_job(rank, world):
    """The deterministic jobs in one spawn."""
    return {"equality": equality_job(rank, world), "scaling": scaling_job(rank, world),
            "same_draws": same_draws_job(rank, world), "errors": errors_job(rank, world),
            "low_precision": low_precision_job(rank, world),
            "defaults": defaults_job(rank, world)}


# HyperConfig() / KDEConfig() as shipped (min_seq_len 1024, sink 8, window 128): exact below
# min_seq_len (non-causal N = 1024, causal N = 2048, where every block of the recursion is
# exact), and the estimator beyond (non-causal N = 2048, causal N = 4096).
DEFAULTS = [(1024, False), (2048, True), (2048, False), (4096, True)]


def defaults_job(rank, world):
    """Per (method, N, causal) of DEFAULTS with the default config: max |distributed - ks.attention|
    of out, lse and the gradients of q, k, v on this rank's rows, the single-process call given
    the generator the distributed call derives for its first problem (_derived(seed, 1)); max
    |distributed - exact attention|; whether the gradients are finite. For P = 2 and 4 and
    N = 4096 the causal rank recursion's only sketched problem is the single process's first
    off-diagonal block (the others have <= 1024 keys)."""
    from kernelsketch.distributed.sortlsh import _derived

    results = {}
    for i, (method, config) in enumerate((("hyper", HyperConfig()), ("kde", KDEConfig()))):
        for N, causal in DEFAULTS:
            q, k, v, d_out, d_lse = _inputs((1, 2, 2, N, N, 16, 16), seed=6000 + N + i)
            q, k = _offset(q, k, 6100 + N + i)  # the problems' means centre the hash
            n = N // world
            rows = slice(rank * n, (rank + 1) * n)
            mine = [t[:, :, rows].clone().requires_grad_() for t in (q, k, v)]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out, lse = context_parallel_attention(
                    *mine, method=method, is_causal=causal, config=config, return_lse=True,
                    generator=torch.Generator().manual_seed(i))
            _loss(out, lse, d_out[:, :, rows], d_lse[:, :, rows]).backward()
            seed = int(torch.randint(2**62, (), generator=torch.Generator().manual_seed(i)))
            whole = [t.clone().requires_grad_() for t in (q, k, v)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExactFallbackWarning)
                ref, ref_lse = ks.attention(*whole, method=method, is_causal=causal,
                                            config=config, return_lse=True,
                                            generator=_derived(seed, 1, device="cpu"))
            _loss(ref, ref_lse, d_out, d_lse).backward()
            exact = ks.attention(q, k, v, method="exact", is_causal=causal)
            results[method, N, causal] = {
                "out": _max_abs(out - ref[:, :, rows]), "lse": _max_abs(lse - ref_lse[:, :, rows]),
                **{f"d{name}": _max_abs(mine[j].grad - whole[j].grad[:, :, rows])
                   for j, name in enumerate("qkv")},
                "grad_finite": all(bool(torch.isfinite(t.grad).all()) for t in mine),
                "vs_exact": _max_abs(out - exact[:, :, rows]),
                "warned": any(issubclass(w.category, ExactFallbackWarning) for w in caught),
                "no_speedup": [str(w.message) for w in caught
                               if issubclass(w.category, NoSpeedupWarning)]}
    return results


def equality_job(rank, world):
    """Per case: max |distributed - ks.attention| of out, lse and the three gradients on this
    rank's rows, and the bytes this rank sent forward and backward."""
    results = {}
    for i, (case, method, config, causal, shape) in enumerate(equality_cases()):
        q, k, v, d_out, d_lse = _inputs(shape, seed=1000 + i)
        whole = [t.clone().requires_grad_() for t in (q, k, v)]
        ref, ref_lse = ks.attention(*whole, method=method, is_causal=causal, config=config,
                                    return_lse=True, generator=torch.Generator().manual_seed(i))
        _loss(ref, ref_lse, d_out, d_lse).backward()
        n, m = shape[3] // world, shape[4] // world
        rows, keys = slice(rank * n, (rank + 1) * n), slice(rank * m, (rank + 1) * m)
        mine = [t[:, :, s].clone().requires_grad_() for t, s in ((q, rows), (k, keys), (v, keys))]
        with count_bytes() as fwd:
            out, lse = context_parallel_attention(
                *mine, method=method, is_causal=causal, config=config, return_lse=True,
                generator=torch.Generator().manual_seed(i))
        with count_bytes() as bwd:
            _loss(out, lse, d_out[:, :, rows], d_lse[:, :, rows]).backward()
        finite = torch.isfinite(ref_lse[:, :, rows])
        results[case] = {
            "out": (out - ref[:, :, rows]).abs().max().item(),
            "lse": _max_abs((lse - ref_lse[:, :, rows])[finite]),
            "lse_inf_match": bool((torch.isfinite(lse) == finite).all()),
            "dq": (mine[0].grad - whole[0].grad[:, :, rows]).abs().max().item(),
            "dk": (mine[1].grad - whole[1].grad[:, :, keys]).abs().max().item(),
            "dv": (mine[2].grad - whole[2].grad[:, :, keys]).abs().max().item(),
            "bytes_fwd": dict(fwd.by_op),
            "bytes_bwd": dict(bwd.by_op),
        }
    return results


# Sketched estimators whose draws differ from the single-process call: compared by the
# distribution of their spectral error over seeds (fixed inputs). Non-causal uniform
# HyperAttention is not here: it has the single-process draws (SAME_DRAWS).
STATISTICAL = [
    ("hyper-sink-window", "hyper",
     HyperConfig(block_size=16, sample_size=16, lsh_bits=4, min_seq_len=0, sink=4, window=16),
     (True,)),
    ("hyper-value-norm-2rounds", "hyper",
     HyperConfig(block_size=16, sample_size=16, lsh_bits=4, min_seq_len=0, hash_rounds=2,
                 sampling="value_norm", sink=0, window=0), (False, True)),
    ("kde", "kde", KDEConfig(block_size=16, sample_size=16, kde_samples=16, lsh_bits=4,
                             min_seq_len=0, sink=0, window=0), (False, True)),
]
STAT_SHAPE = (2, 4, 2, 128, 128, 16, 16)
# KDEformer with its defaults (min_seq_len 1024, sink 8, window 128) where it runs the
# estimator: non-causal N = 2048, causal N = 4096 (its first off-diagonal block); the
# spectral error on 512 sampled rows.
STATISTICAL_DEFAULTS = [
    ("kde-defaults", "kde", KDEConfig(), (False,), (1, 2, 2, 2048, 2048, 16, 16)),
    ("kde-defaults", "kde", KDEConfig(), (True,), (1, 2, 2, 4096, 4096, 16, 16)),
]


def clustered_inputs(shape, seed, clusters=8, spread=0.3, strength=2.0):
    """Queries and keys near a few shared directions (peaked attention, what sortLSH exploits)."""
    B, Hq, Hkv, N, M, D, Dv = shape
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, D, generator=g, dtype=torch.float64)
    centers = strength * D**0.25 * centers / centers.norm(dim=-1, keepdim=True)

    def points(H, L):
        pick = torch.randint(clusters, (B, H, L), generator=g)
        return centers[pick] + spread * torch.randn(B, H, L, D, generator=g, dtype=torch.float64)

    return points(Hq, N), points(Hkv, M), torch.randn(B, Hkv, M, Dv, generator=g,
                                                      dtype=torch.float64)


def statistical_job(rank, world, base, seeds, defaults=False):
    """Spectral error (mean over heads) of the distributed and of the single-process estimator,
    per case, causal flag and seed; computed on rank 0 from the gathered outputs once every
    distributed call is done (the other ranks do not wait on it).
    ``defaults``: the cases of STATISTICAL_DEFAULTS instead of STATISTICAL."""
    import torch.distributed as dist

    from kernelsketch.attn.common.metrics import spectral_error

    cases = (STATISTICAL_DEFAULTS if defaults else
             [(*case, STAT_SHAPE) for case in STATISTICAL])
    gathered = []  # (case, method, config, causal, shape, [full output per seed]) on rank 0
    for name, method, config, causal_flags, shape in cases:
        q, k, v = clustered_inputs(shape, seed=base)
        n = q.shape[2] // world
        for causal in causal_flags:
            outs = []
            for s in range(seeds):
                out = context_parallel_attention(
                    *(t[:, :, rank * n:(rank + 1) * n] for t in (q, k, v)), method=method,
                    is_causal=causal, config=config,
                    generator=torch.Generator().manual_seed(base + 1 + s))
                parts = [torch.empty_like(out) for _ in range(world)]
                dist.all_gather(parts, out.contiguous())
                outs.append(torch.cat(parts, dim=2))
            gathered.append((f"{name}-{'causal' if causal else 'full'}", method, config, causal,
                             shape, outs))
    if rank:
        return None
    results = {}
    for case, method, config, causal, shape, outs in gathered:
        q, k, v = clustered_inputs(shape, seed=base)
        rows = 512 if shape[3] > 512 else None
        errs = {"distributed": [], "single": []}
        for s, full in enumerate(outs):
            single = ks.attention(q, k, v, method=method, is_causal=causal, config=config,
                                  generator=torch.Generator().manual_seed(base - 1 - s))
            for key, o in (("distributed", full), ("single", single)):
                errs[key].append(spectral_error(
                    o, q, k, v, is_causal=causal, num_rows=rows,
                    generator=torch.Generator().manual_seed(base + s)).mean().item())
        results[case] = errs
    return results
