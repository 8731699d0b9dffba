"""LevAttention behaviour that mutants surviving tools/mutation.py showed untested (issue 22).

A universal set that no key reaches (eps above every leverage score) was never run: the
branch that pads it with one masked slot survived both ``idx.shape[+1]`` (the head axis)
and a ``torch.full`` without its fill value (a TypeError on that input).
"""

import torch

import kernelsketch as ks
from kernelsketch.attn.lev.config import LevConfig
from kernelsketch.attn.lev.selection import universal_set


def test_no_key_reaching_eps_leaves_the_causal_window(torch_generator):
    """With eps = 1 no key of 40 random ones (d = 4, p = 2: scores sum to rank <= 16) is in
    the universal set, so the output is causal sliding-window attention alone, checked
    against a float64 masked softmax."""
    g = torch_generator
    B, H, N, D, w = 1, 2, 40, 4, 8
    q, k = (torch.randn(B, H, N, D, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, H, N, 3, generator=g, dtype=torch.float64)
    assert universal_set(k, 2, 1.0, None).shape[-1] == 0
    out = ks.attention(q, k, v, method="lev", is_causal=True,
                       config=LevConfig(eps=1.0, window=w, sink=0))
    i, j = torch.arange(N)[:, None], torch.arange(N)[None]
    scores = (q @ k.transpose(-1, -2)) * D**-0.5
    ref = torch.softmax(scores.masked_fill(~((j <= i) & (j > i - w)), float("-inf")), -1) @ v
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
