"""Error measures that the attention papers bound.

* :func:`relative_error` — ‖Õ − O‖_F / ‖O‖_F of the outputs.
* :func:`spectral_error` — HyperAttention's / KDEformer's normalised spectral
  error ‖Õ − D⁻¹AV‖₂ / (‖D⁻¹A‖₂ ‖V‖₂) per head, on all rows or a random subset
  of query rows for long sequences (‖D⁻¹A‖₂ by power iteration).
* :func:`heavy_entry_recall` — fraction of attention entries >= eps whose key
  a method kept (LevAttention's universal set, HyperAttention's blocks).
"""

from __future__ import annotations

import torch

from ..._checks import check_attention_inputs, check_float, check_int, check_tensor
from .gqa import query_positions


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """‖approx − exact‖_F / ‖exact‖_F computed in float64.

    Each norm is taken of its vector divided by its largest entry, so outputs near
    the ends of float64's range (below ~1e-154 or above ~1e154, where squared
    entries under- or overflow) are measured correctly. A non-finite ``approx``
    gives inf or NaN.
    """
    check_tensor("approx", approx, finite=False)
    check_tensor("exact", exact)
    if approx.shape != exact.shape:
        raise ValueError(f"approx must have shape {tuple(exact.shape)}, got {tuple(approx.shape)}")
    a, e = approx.detach().double(), exact.detach().double().to(approx.device)
    s = e.abs().amax()
    if s == 0:  # exact is zero: the error is ‖approx‖ against a norm of 1e-300
        return float(_frobenius(a) / 1e-300)
    return float(_frobenius(a / s - e / s) / _frobenius(e / s))


def _frobenius(x: torch.Tensor) -> torch.Tensor:
    """‖x‖_F as max|x| · ‖x / max|x|‖_F: no squared entry under- or overflows."""
    m = x.abs().amax()
    if not torch.isfinite(m) or m == 0:
        return m
    return m * torch.linalg.vector_norm(x / m)


def attention_probs(
    q: torch.Tensor, k: torch.Tensor, *, scale: float, is_causal: bool = False,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact normalised attention matrix D⁻¹A in float64 (small sizes only).

    q [B, Hq, N, D], k [B, Hkv, M, D] -> [B, Hq, R, M] for the query ``rows``
    (all N rows by default); causal aligned bottom-right.
    """
    _, Hq, N, _ = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    if rows is not None:
        q = q[:, :, rows]
    kk = k.double().repeat_interleave(Hq // Hkv, dim=1)
    s = torch.matmul(q.double(), kk.transpose(-1, -2)) * scale
    if is_causal:
        pos = query_positions(N, M, 1, q.device)
        if rows is not None:
            pos = pos[rows]
        s = s.masked_fill(torch.arange(M, device=q.device) > pos.unsqueeze(-1), float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.nan_to_num(p, nan=0.0)


def _spectral_norm(mat: torch.Tensor, iters: int) -> torch.Tensor:
    """Largest singular value of a [R, M] matrix by power iteration on mat matᵀ."""
    gen = torch.Generator(device=mat.device).manual_seed(0)
    x = torch.randn(mat.shape[0], dtype=mat.dtype, device=mat.device, generator=gen)
    sigma = torch.zeros((), dtype=mat.dtype, device=mat.device)
    for _ in range(iters):
        y = mat @ (mat.T @ x)
        nrm = torch.linalg.vector_norm(y)
        if nrm == 0:
            return sigma
        x = y / nrm
        sigma = nrm.sqrt()
    return sigma


def spectral_error(
    approx_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    num_rows: int | None = None,
    generator: torch.Generator | None = None,
    power_iters: int = 30,
) -> torch.Tensor:
    """Normalised spectral error ‖Õ − D⁻¹AV‖₂ / (‖D⁻¹A‖₂ ‖V‖₂) of each head.

    Parameters
    ----------
    approx_out : [B, Hq, N, Dv] approximate attention output.
    q, k, v : the inputs it was computed from (SDPA layout, GQA allowed).
    num_rows : evaluate on this many uniformly sampled query rows (the same
        rows in the numerator and in ‖D⁻¹A‖₂); all rows when None.

    Returns
    -------
    [B, Hq] float64 tensor of per-head errors (KDEformer's Theorem bound is
    on this quantity: ε after enough samples).
    """
    B, Hq, Hkv, N, _ = check_attention_inputs(q, k, v)
    check_tensor("approx_out", approx_out, ndim=4, finite=False)
    if approx_out.shape[:3] != q.shape[:3]:
        raise ValueError(f"approx_out must have shape [B, Hq, N, Dv] = {tuple(q.shape[:3])} + [Dv], "
                         f"got {tuple(approx_out.shape)}")
    # Checked whatever KERNELSKETCH_CHECK_FINITE says: the SVD of the numerator would
    # raise torch's LinAlgError on NaN (and its norm is undefined on inf).
    if not bool(torch.isfinite(approx_out).all()):
        raise ValueError("approx_out must be finite to have a spectral error, found NaN or "
                         "infinite values")
    scale = q.shape[-1] ** -0.5 if scale is None else check_float("scale", scale, min=0.0,
                                                                    min_exclusive=True)
    check_int("power_iters", power_iters, min=1)
    rows = None
    if num_rows is not None and check_int("num_rows", num_rows, min=1) < N:
        rows = torch.randperm(N, generator=generator, device="cpu")[:num_rows].sort().values
        rows = rows.to(q.device)
    errs = torch.zeros(B, Hq, dtype=torch.float64)
    group = Hq // Hkv
    for b in range(B):
        for h in range(Hq):
            p = attention_probs(q[b : b + 1, h : h + 1], k[b : b + 1, h // group : h // group + 1],
                                scale=scale, is_causal=is_causal, rows=rows)[0, 0]
            vv = v[b, h // group].double()
            exact = p @ vv
            approx = approx_out[b, h].double()
            if rows is not None:
                approx = approx[rows]
            num = torch.linalg.matrix_norm(approx - exact, ord=2)
            den = _spectral_norm(p, power_iters) * torch.linalg.matrix_norm(vv, ord=2)
            errs[b, h] = float(num / den.clamp_min(1e-300))
    return errs


def heavy_entry_recall(
    q: torch.Tensor,
    k: torch.Tensor,
    captured: torch.Tensor,
    *,
    eps: float,
    scale: float | None = None,
    is_causal: bool = False,
) -> float:
    """Fraction of exact attention entries >= eps whose (query, key) pair is captured.

    captured : bool, broadcastable to [B, Hq, N, M]. Returns 1.0 if no entry
    reaches eps.
    """
    check_tensor("captured", captured, dtypes=(torch.bool,), finite=False)
    eps = check_float("eps", eps, min=0.0, max=1.0, min_exclusive=True)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    p = attention_probs(q, k, scale=scale, is_causal=is_causal)
    heavy = p >= eps
    total = int(heavy.sum())
    if total == 0:
        return 1.0
    return int((heavy & captured.to(heavy.device)).sum()) / total
