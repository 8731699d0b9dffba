"""Exact softmax attention: the reference every approximation is tested against.

Two building blocks used by every method:

* :func:`partial_attention` — attention of queries over an explicit key set
  (any leading batch dims), with optional boolean mask and per-key
  log-weights, returning ``(out, lse)`` in the accumulation dtype. Sketched
  methods call it on sorted blocks and on sampled keys.
* :func:`exact_partial` — chunked exact attention in SDPA layout with GQA and
  a bottom-right causal mask; memory O(N x chunk) per head, never N x M.
* :func:`flash_lse` — the same ``(out, lse)`` from SDPA's fused CPU flash
  kernel (``_scaled_dot_product_flash_attention_for_cpu``), with an optional
  additive float mask, differentiable in out AND lse (custom backward on the
  kernel's own backward). The fast path of every method on CPU.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..._checks import check_int
from .gqa import fold_groups, query_positions, unfold_groups
from .merge import accumulation_dtype, merge_partials
from .spec import MethodConfig, MethodSpec


@dataclass(frozen=True)
class ExactConfig(MethodConfig):
    """Exact attention.

    chunk_size : queries and keys are processed in chunks of this many rows
        when the log-sum-exp is needed (memory O(chunk_size²) per head);
        without it, PyTorch SDPA computes the output.
    """

    chunk_size: int = 1024

    def __post_init__(self) -> None:
        check_int("chunk_size", self.chunk_size, min=1)


class ExactFallbackWarning(UserWarning):
    """A sketched method computed exact attention (the input is too short for its sketch)."""


class NoSpeedupWarning(UserWarning):
    """A sketched method ran its sketch where it was measured slower than exact attention
    (BENCHMARKS.md, "CPU speed against SDPA")."""


def warn_no_speedup(method: str, reason: str) -> None:
    """Warn that ``method``'s sketch runs where it was measured slower than exact SDPA;
    shown once per method and reason (the message holds no sizes)."""
    warnings.warn(f"method={method!r} runs its sketch {reason}, where it was measured slower "
                  f"than exact attention (BENCHMARKS.md); method='exact' is faster there",
                  NoSpeedupWarning, stacklevel=2)


def warn_exact_fallback(method: str, reason: str) -> None:
    """Warn that ``method`` ran exact attention; shown once per method and reason under
    Python's default warning filter (the message holds no sizes)."""
    warnings.warn(f"method={method!r} computed exact attention, not its sketch: {reason}",
                  ExactFallbackWarning, stacklevel=2)


def partial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    mask: torch.Tensor | None = None,
    key_log_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q`` over the keys ``k`` with optional mask and importance weights.

    Parameters
    ----------
    q : [..., n, D]; k : [..., m, D]; v : [..., m, Dv] (leading dims broadcast).
    mask : bool, broadcastable to [..., n, m]; True keeps a pair.
    key_log_weights : broadcastable to [..., m]; adds
        ``log w_j`` to the logits, so the result estimates Σ_j w_j e^{s_ij}(·).

    Returns
    -------
    out : [..., n, Dv] and lse : [..., n] in float32 (float64 for float64 q);
    rows with no kept key get out = 0, lse = -inf.
    """
    acc = accumulation_dtype(q.dtype)
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    if key_log_weights is not None:
        s = s + key_log_weights.to(acc).unsqueeze(-2)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    # The row maximum is a constant shift: the result does not depend on it,
    # so it is detached (this is not the log-sum-exp, which stays differentiable).
    m = s.amax(dim=-1).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m.unsqueeze(-1))
    denom = p.sum(dim=-1)
    nonzero = denom > 0
    denom_safe = torch.where(nonzero, denom, torch.ones_like(denom))
    out = torch.matmul(p, v.to(acc)) / denom_safe.unsqueeze(-1)
    lse = torch.where(nonzero, m + torch.log(denom_safe), torch.full_like(m, float("-inf")))
    return out, lse


def exact_partial(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    is_causal: bool = False,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked exact attention in SDPA layout, returning ``(out, lse)``.

    q [B, Hq, N, D], k [B, Hkv, M, D], v [B, Hkv, M, Dv]; causal aligned
    bottom-right. ``out`` [B, Hq, N, Dv] and ``lse`` [B, Hq, N] are float32
    (float64 for float64 inputs). Differentiable; memory per head is
    O(chunk_size²) for the logits plus O(N·Dv) for the result.
    """
    B, Hq, N, _ = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    if N == 0:
        acc = accumulation_dtype(q.dtype)
        return q.new_zeros(B, Hq, 0, v.shape[-1], dtype=acc), q.new_zeros(B, Hq, 0, dtype=acc)
    groups = Hq // Hkv
    qf = fold_groups(q, Hkv)
    rows = qf.shape[2]
    pos = query_positions(N, M, groups, q.device)
    outs, lses = [], []
    for r0 in range(0, rows, chunk_size):
        r1 = min(rows, r0 + chunk_size)
        qc = qf[:, :, r0:r1]
        pos_c = pos[r0:r1]
        last_key = int(pos_c.max()) if is_causal else M - 1
        out = lse = None
        for c0 in range(0, min(M, last_key + 1), chunk_size):
            c1 = min(M, c0 + chunk_size)
            mask = None
            if is_causal and int(pos_c.min()) < c1 - 1:
                key_pos = torch.arange(c0, c1, device=q.device)
                mask = key_pos.unsqueeze(0) <= pos_c.unsqueeze(1)
            part = partial_attention(qc, k[:, :, c0:c1], v[:, :, c0:c1], scale=scale, mask=mask)
            out, lse = part if out is None else merge_partials(out, lse, *part)
        if out is None:  # rows that see no key (causal with M < N)
            acc = accumulation_dtype(q.dtype)
            out = torch.zeros(B, Hkv, r1 - r0, v.shape[-1], dtype=acc, device=q.device)
            lse = torch.full((B, Hkv, r1 - r0), float("-inf"), dtype=acc, device=q.device)
        outs.append(out)
        lses.append(lse)
    out = torch.cat(outs, dim=2)
    lse = torch.cat(lses, dim=2)
    return unfold_groups(out, Hq), unfold_groups(lse, Hq)


_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_CPU_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class _FlashCPU(torch.autograd.Function):
    """SDPA's CPU flash kernel returning ``(out, lse)``, both differentiable.

    The kernel's backward takes ``Δ_i = Σ_d dO_id O_id``; the lse gradient
    enters every ``dS_ij`` as ``+P_ij dlse_i``, i.e. as ``Δ_i − dlse_i``. It is
    folded in by one extra head-dim column: zero in q, k and v (logits and
    values unchanged), one in dO and ``−dlse`` in O.
    """

    @staticmethod
    def forward(ctx, q, k, v, mask, scale, is_causal):
        out, lse = _FLASH_CPU(q, k, v, 0.0, is_causal, attn_mask=mask, scale=scale)
        ctx.save_for_backward(q, k, v, mask, out, lse)
        ctx.scale, ctx.is_causal = scale, is_causal
        if mask is not None:
            # Rows whose every key is masked: the kernel returns out 0, lse 0; the
            # log-sum-exp of an empty set is -inf (the saved lse stays the kernel's).
            lse = lse.masked_fill(torch.isneginf(mask).all(-1), float("-inf"))
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, mask, out, lse = ctx.saved_tensors
        fold = dlse is not None and bool(dlse.any())
        if fold:
            def pad(x, value=0.0):
                return F.pad(x, (0, 1), value=value)
            dout = torch.cat((dout.to(out.dtype), torch.ones_like(out[..., :1])), -1)
            out = torch.cat((out, (-dlse).to(out.dtype).unsqueeze(-1)), -1)
            q, k, v = pad(q), pad(k), pad(v)
        dq, dk, dv = _FLASH_CPU_BWD(dout.to(out.dtype), q, k, v, out, lse, 0.0, ctx.is_causal,
                                    attn_mask=mask, scale=ctx.scale)
        if fold:
            dq, dk, dv = dq[..., :-1], dk[..., :-1], dv[..., :-1]
        return dq, dk, dv, None, None, None


def flash_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    is_causal: bool = False,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``(out, lse)`` through SDPA's fused CPU flash kernel (CPU tensors only).

    Parameters
    ----------
    q : [B, Hq, N, D]; k : [B, Hkv, M, D]; v : [B, Hkv, M, Dv] (Hq a multiple
        of Hkv: grouped queries without copying keys); one float dtype.
    is_causal : causal mask aligned bottom-right (query i sees keys
        j <= i + M - N); rows that see no key give out 0, lse -inf.
    mask : additive float mask broadcastable to [B, Hq, N, M] (float32 for
        half-precision q, else q's dtype), e.g. log importance weights with
        ``-inf`` for dropped pairs; not differentiated. Rows whose mask is
        ``-inf`` everywhere give out 0, lse -inf.

    Returns
    -------
    out : [B, Hq, N, Dv] in q's dtype; lse : [B, Hq, N] float32 (float64 for
    float64 q). Both differentiable w.r.t. q, k, v.
    """
    N, M = q.shape[2], k.shape[2]
    if N == 0 or M == 0:  # the kernel divides by these counts (SIGFPE): nothing to attend
        acc = accumulation_dtype(q.dtype)
        B, Hq = q.shape[:2]
        return (q.new_zeros(B, Hq, N, v.shape[-1]),
                torch.full((B, Hq, N), float("-inf"), dtype=acc, device=q.device))
    if is_causal and N != M:
        if mask is not None:
            raise ValueError("flash_lse takes is_causal or a mask with N != M, got both")
        if N > M:  # the first N - M queries see no key
            out, lse = flash_lse(q[:, :, N - M:], k, v, scale=scale, is_causal=True)
            return F.pad(out, (0, 0, N - M, 0)), F.pad(lse, (N - M, 0), value=float("-inf"))
        # The first M - N keys are seen by every query; the rest is a square causal block.
        prefix = flash_lse(q, k[:, :, : M - N], v[:, :, : M - N], scale=scale)
        diag = flash_lse(q, k[:, :, M - N:], v[:, :, M - N:], scale=scale, is_causal=True)
        out, lse = merge_partials(diag[0].to(diag[1].dtype), diag[1],
                                  prefix[0].to(diag[1].dtype), prefix[1])
        return out.to(q.dtype), lse
    D, Dv = q.shape[-1], v.shape[-1]
    if D != Dv:  # the kernel needs one head size: zero columns change neither logits nor values
        width = max(D, Dv)
        q, k = F.pad(q, (0, width - D)), F.pad(k, (0, width - D))
        v = F.pad(v, (0, width - Dv))
    if mask is not None and mask.dtype != q.dtype and q.dtype not in (torch.float16,
                                                                        torch.bfloat16):
        mask = mask.to(q.dtype)
    out, lse = _FlashCPU.apply(q, k, v, mask, scale, is_causal)
    return out[..., :Dv], lse


def flash_applies(q: torch.Tensor) -> bool:
    """Whether the CPU fast path runs: CPU tensors in float32, bfloat16 or float16.

    float64 keeps the torch reference path (the oracle of the tests).
    """
    return q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16, torch.float16)


SKETCH_DTYPES = ("auto", "input", "bfloat16")


@functools.cache
def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX tiles or AVX512-BF16), where
    SDPA's CPU flash kernel runs bfloat16 2.3x faster than float32 (BENCHMARKS.md)."""
    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, name, lambda: False)())
               for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def sketch_product_dtype(q: torch.Tensor, setting: str) -> torch.dtype:
    """The dtype in which a sketched call multiplies queries, keys and values on CPU: its
    sketched blocks on the fused flash path (one hash round) and the causal recursion's
    exact leaves (softmax and accumulation stay float32 inside the kernel).

    ``setting`` (the LSH methods' ``sketch_dtype``): "input" keeps q's dtype;
    "bfloat16" rounds float32 inputs to bfloat16; "auto" does so on CPUs with native
    bfloat16 products (:func:`native_bf16_cpu`). The rounding (relative 2^-9 per entry)
    is far below the sketch's own error: measured normalised spectral errors equal to
    three decimals (docs/hyper.md). Calls that fall back to exact attention (up to
    ``min_seq_len``) keep q's dtype, and so do the hash and the sampling distributions.
    """
    if q.dtype != torch.float32 or q.device.type != "cpu" or setting == "input":
        return q.dtype
    if setting == "bfloat16" or native_bf16_cpu():
        return torch.bfloat16
    return q.dtype


def _flash_with_lse(q, k, v, *, scale, is_causal):
    """CUDA fp16/bf16 fast path through the flash kernel that returns the LSE (no autograd of lse)."""
    Hq, Hkv = q.shape[1], k.shape[1]
    if Hq != Hkv:
        k = k.repeat_interleave(Hq // Hkv, dim=1)
        v = v.repeat_interleave(Hq // Hkv, dim=1)
    res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, is_causal, False, scale=scale)
    return res[0], res[1]


def _use_flash(q, k, v, is_causal) -> bool:
    return (
        q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and q.shape[-1] == v.shape[-1]
        and q.shape[-1] <= 256
        and q.shape[-1] % 8 == 0
        and (not is_causal or q.shape[2] == k.shape[2])
        and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
    )


def exact_lse(q, k, v, *, scale, is_causal=False, chunk_size=1024):
    """Exact ``(out, lse)``: SDPA's flash kernel (CPU: :func:`flash_lse`; CUDA half-precision
    inference), else chunked torch.

    Same contract as :func:`exact_partial` (out in the accumulation dtype);
    used wherever a method needs an exact part with its log-sum-exp (causal
    leaves, short blocks).
    """
    if flash_applies(q):
        out, lse = flash_lse(q, k, v, scale=scale, is_causal=is_causal)
        return out.to(lse.dtype), lse
    if _use_flash(q, k, v, is_causal):
        out, lse = _flash_with_lse(q, k, v, scale=scale, is_causal=is_causal)
        return out.to(lse.dtype), lse
    return exact_partial(q, k, v, scale=scale, is_causal=is_causal, chunk_size=chunk_size)


def exact_forward(q, k, v, *, is_causal, scale, config, generator, need_lse):
    """Registry entry of the exact method (see :class:`ExactConfig`)."""
    del generator
    if not need_lse and (not is_causal or q.shape[2] == k.shape[2]):
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=is_causal, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )
        return out, None
    return exact_lse(q, k, v, scale=scale, is_causal=is_causal, chunk_size=config.chunk_size)


METHOD = MethodSpec(
    name="exact",
    forward=exact_forward,
    config_cls=ExactConfig,
    summary="exact softmax attention (SDPA; chunked with log-sum-exp)",
    paper="reference",
    reference=None,
)
