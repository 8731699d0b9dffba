"""HyperConfig's smallest lsh_bits and full budget, and the exact fallback's lse.

Found by tools/mutation.py (hyper's twins of tests/attn/kde/test_kde_config_edges.py).
"""

import pytest
import torch

import kernelsketch as ks
from kernelsketch.attn.hyper import HyperConfig

from ..reference import naive_attention


def qkv(seed, N, M, D=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 2, N, D, generator=g, dtype=torch.float64),
            torch.randn(1, 1, M, D, generator=g, dtype=torch.float64),
            torch.randn(1, 1, M, D, generator=g, dtype=torch.float64))


def hyper(q, k, v, cfg, seed, **kw):
    return ks.attention(q, k, v, method="hyper", config=cfg,
                        generator=torch.Generator().manual_seed(seed), **kw)


def test_full_budget_is_one_block_and_nothing_else(seed):
    HyperConfig(lsh_bits=1)
    cfg = HyperConfig.full_budget(300)
    assert (cfg.block_size, cfg.sample_size, cfg.min_seq_len, cfg.sink, cfg.window) == (
        300, 0, 0, 0, 0)
    assert HyperConfig.full_budget(0).block_size == 1
    q, k, v = qkv(seed, 300, 300)  # longer than the default block
    torch.testing.assert_close(hyper(q, k, v, cfg, seed), naive_attention(q, k, v))


@pytest.mark.filterwarnings("ignore:method=.* computed exact attention")
@pytest.mark.parametrize("is_causal", [False, True])
def test_exact_fallback_returns_the_lse(is_causal, seed):
    q, k, v = qkv(seed, 40, 40)
    out, lse = hyper(q, k, v, HyperConfig(min_seq_len=64), seed, is_causal=is_causal,
                     return_lse=True)
    ref, ref_lse = naive_attention(q, k, v, is_causal=is_causal, return_lse=True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lse, ref_lse)
