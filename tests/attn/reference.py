"""The naive float64 oracle that every attention test compares against."""

import torch


def naive_attention(q, k, v, *, scale=None, is_causal=False, return_lse=False):
    """softmax(q kᵀ scale) v in float64, GQA by repetition, causal bottom-right, materialised."""
    q, k, v = q.double(), k.double(), v.double()
    Hq, Hkv = q.shape[1], k.shape[1]
    k = k.repeat_interleave(Hq // Hkv, dim=1)
    v = v.repeat_interleave(Hq // Hkv, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = q @ k.transpose(-1, -2) * scale
    N, M = s.shape[-2:]
    if is_causal:
        keep = torch.ones(N, M, dtype=torch.bool, device=q.device).tril(M - N)
        s = s.masked_fill(~keep, float("-inf"))
    p = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)
    out = p @ v
    if return_lse:
        return out, torch.logsumexp(s, dim=-1)
    return out


def random_qkv(B=2, Hq=4, Hkv=2, N=64, M=None, D=16, Dv=None, dtype=torch.float64, scale=1.0,
               device="cpu", requires_grad=False, generator=None):
    """Random inputs in SDPA layout, drawn from ``generator`` (the test's; see tests/conftest.py)."""
    M = N if M is None else M
    Dv = D if Dv is None else Dv
    g = {"generator": generator, "device": device}
    q = (torch.randn(B, Hq, N, D, **g) * scale).to(dtype)
    k = (torch.randn(B, Hkv, M, D, **g) * scale).to(dtype)
    v = torch.randn(B, Hkv, M, Dv, **g).to(dtype)
    if requires_grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    return q, k, v
