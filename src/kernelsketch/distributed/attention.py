"""``context_parallel_attention``: sketched attention of a sequence sharded over ranks.

Each rank of a ``torch.distributed`` process group passes its contiguous
shard of the sequence (shards of equal length, in rank order) and receives
its rows of the output. What each method communicates (Theory:
docs/distributed.md):

==========  ===============================================  ===========================
method      collectives                                      bytes per rank
==========  ===============================================  ===========================
exact       ring of key/value shards, LSE merge              (P-1) N/P (D+Dv)
lev         all-reduce of the Gram, all-gather of the        O(d² + P·budget + budget·(D+Dv))
            candidates' scores, all-reduce of the selected
            keys/values
polysketch  all-gather of per-rank states (exclusive         O(P r² Dv) causal, O(r² Dv)
            prefix scan), halo of < block_size keys          non-causal
hyper, kde  bucket histograms, all-to-all to bucket ranges,  O(N/P (D+Dv)) (x log P causal)
            sample all-gathered, results routed back
==========  ===============================================  ===========================
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.distributed as dist

from .._checks import FLOAT_DTYPES, check_attention_inputs, check_float, check_generator
from ..attn.api import get_method, resolve_config
from ..attn.common.merge import accumulation_dtype
from ..attn.common.spec import MethodConfig
from .collectives import backward_in_order, gather_ints, tie

__all__ = ["CONTEXT_PARALLEL_METHODS", "context_parallel_attention"]

# Methods with a context-parallel path.
CONTEXT_PARALLEL_METHODS = ("exact", "lev", "polysketch", "hyper", "kde")


def _draws(method: str, config: MethodConfig) -> bool:
    """Whether the method draws from ``generator`` with this config (its state must then agree)."""
    if method == "lev":
        return config.sketch_size is not None and config.p > 2
    if method == "polysketch":
        return config.degree > 2
    return method in ("hyper", "kde")


def _fingerprint(generator: torch.Generator | None, device: torch.device) -> int:
    """crc32 of the generator state (torch's default generator of ``device`` when None)."""
    if generator is not None:
        state = generator.get_state()
    elif device.type == "cuda":
        state = torch.cuda.get_rng_state(device)
    else:
        state = torch.random.get_rng_state()
    return zlib.crc32(state.numpy().tobytes())


def _agree(q, k, v, method, config, is_causal, scale, generator, group) -> None:
    """Raise the same error on every rank unless all pass the same shapes, dtype, options and
    (for the sketched methods) generator state."""
    scale_bits = int.from_bytes(torch.tensor(scale, dtype=torch.float64).numpy().tobytes(),
                                "little") % 2**62
    fields = {
        "q": list(q.shape), "k": list(k.shape), "v": list(v.shape),
        "dtype": [FLOAT_DTYPES.index(q.dtype)],
        "method, is_causal and scale": [CONTEXT_PARALLEL_METHODS.index(method), int(is_causal),
                                        scale_bits],
        "generator": [_fingerprint(generator, q.device)] if _draws(method, config) else [],
    }
    every = gather_ints([x for f in fields.values() for x in f], group, q.device)
    start = 0
    for name, mine in fields.items():
        theirs = [e[start:start + len(mine)] for e in every]
        start += len(mine)
        if all(t == mine for t in theirs):
            continue
        if name in ("q", "k", "v"):
            raise ValueError(
                f"{name} must have the same shape on every rank (contiguous shards of equal length "
                f"in rank order, [B, H, N/P, D]), got {dict(enumerate(theirs))} by rank")
        if name == "dtype":
            raise TypeError(f"q, k, v must have the same dtype on every rank, got "
                            f"{[FLOAT_DTYPES[t[0]] for t in theirs]} by rank")
        if name == "generator":
            raise ValueError(
                f"generator must be in the same state on every rank for method {method!r} (the "
                "sketch, hashes and samples are shared): seed it identically everywhere; got "
                f"{len({t[0] for t in theirs})} different states")
        raise ValueError(f"{name} must be the same on every rank, got (method, is_causal) = "
                         f"{[(CONTEXT_PARALLEL_METHODS[t[0]], bool(t[1])) for t in theirs]} by "
                         "rank (or different scales)")


def context_parallel_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    method: str,
    is_causal: bool = False,
    scale: float | None = None,
    config: MethodConfig | None = None,
    return_lse: bool = False,
    generator: torch.Generator | None = None,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of a sequence sharded over the ranks of ``group``, as ``ks.attention`` on the whole.

    Call it on every rank of the group with that rank's shard. The result is
    the rank's rows of ``kernelsketch.attention`` on the concatenated shards:
    equal for ``exact``, ``lev`` and ``polysketch`` (up to float rounding),
    the same estimator for ``hyper`` and ``kde`` (the same hash everywhere;
    its draws are not those of a single-process call).

    Parameters
    ----------
    q : [B, Hq, N/P, D], this rank's contiguous query shard (rank r holds
        queries r·N/P ... (r+1)·N/P - 1); float16, bfloat16, float32, float64.
    k : [B, Hkv, M/P, D] and v : [B, Hkv, M/P, Dv], this rank's key/value
        shard (GQA: Hq a multiple of Hkv; cross-attention: M != N).
        Every rank must pass equal shapes and dtype (a ValueError otherwise).
    method : one of :data:`CONTEXT_PARALLEL_METHODS`.
    is_causal : causal mask over the whole sequence (aligned bottom-right as
        in ``ks.attention``). Causal needs N == M except for ``exact`` and
        ``lev`` without ``window``.
    scale, config, return_lse : as in :func:`kernelsketch.attention`.
    generator : the source of the sketch's randomness; it must be in the same
        state on every rank (e.g. ``torch.Generator().manual_seed(s)`` with
        one ``s``); a ValueError otherwise. Every rank's generator advances
        by the same draws.
    group : the process group (default: the world group).

    Returns
    -------
    out : [B, Hq, N/P, Dv] in q's dtype, or ``(out, lse)`` with lse
    [B, Hq, N/P] (float32; float64 for float64 inputs).

    Backward: every method is differentiable in q, k and v (every rank must
    call backward; the selections, hashes and sampling distributions carry no
    gradient, as in the single process). The gradients equal the single
    process's for ``exact``, ``lev`` and ``polysketch``, for ``hyper`` when
    the draws coincide (non-causal, uniform sampling) and for both sortLSH
    methods at full budget (tested); see docs/distributed.md.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "context_parallel_attention needs an initialised torch.distributed process group: "
            "call torch.distributed.init_process_group (e.g. under torchrun) first"
        )
    spec = get_method(method)
    if method not in CONTEXT_PARALLEL_METHODS:
        raise ValueError(f"method must be one of {CONTEXT_PARALLEL_METHODS} for context "
                         f"parallelism, got {method!r}")
    check_attention_inputs(q, k, v)
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    scale = (1.0 / math.sqrt(q.shape[-1]) if scale is None
             else check_float("scale", scale, min=0.0, min_exclusive=True))
    check_generator(generator, q.device)
    if isinstance(config, str):
        raise TypeError(
            f"config must be a {spec.config_cls.__name__} or None for context parallelism, got "
            f"{config!r} (config='auto' is single-process: kernelsketch.attn.choose_budget on "
            "a sample of the sequence gives a config to pass on every rank)")
    cfg = resolve_config(spec, config)
    _agree(q, k, v, method, cfg, is_causal, scale, generator, group)
    cross_ok = method == "exact" or (method == "lev" and not cfg.window)
    if is_causal and q.shape[2] != k.shape[2] and not cross_ok:
        raise ValueError(
            f"is_causal=True with method {method!r} needs query and key shards of equal length "
            f"(self-attention; causal cross-attention: exact, or lev without window), got "
            f"N/P={q.shape[2]} and M/P={k.shape[2]}"
        )
    kwargs = {"is_causal": is_causal, "scale": scale, "group": group}
    grad = any(t.requires_grad for t in (q, k, v))
    with backward_in_order(q.device, enabled=grad) as chain:
        out, lse = _dispatch(q, k, v, method, cfg, generator, kwargs)
    out = tie(out, chain).to(q.dtype)
    if return_lse:
        return out, tie(lse, chain).to(accumulation_dtype(q.dtype))
    return out


def _dispatch(q, k, v, method, cfg, generator, kwargs):
    if method == "exact":
        from .exact import ring_attention

        out, lse = ring_attention(q, k, v, **kwargs)
    elif method == "polysketch":
        from .polysketch import polysketch_context_parallel

        out, lse = polysketch_context_parallel(q, k, v, config=cfg, generator=generator, **kwargs)
    elif method == "lev":
        from .lev import lev_context_parallel

        out, lse = lev_context_parallel(q, k, v, config=cfg, generator=generator, **kwargs)
    else:
        from .collectives import group_size
        from .sortlsh import sortlsh_context_parallel

        # The budget schedule of the whole sequence (P·m keys), as in the single process.
        cfg = cfg.scheduled(is_causal=kwargs["is_causal"],
                            num_keys=group_size(kwargs["group"]) * k.shape[2])
        out, lse = sortlsh_context_parallel(q, k, v, method=method, config=cfg,
                                            generator=generator, **kwargs)
    return out, lse
