"""KDEConfig's bounds and full budget, and the sample-size edges of the estimator.

Found by tools/mutation.py: the smallest valid lsh_bits / kde_samples, negative
sink / window, full_budget's fields, a sample of exactly M keys (every key once,
weight 1: exact) and a sample of one key all went unchecked.
"""

import pytest
import torch

import kernelsketch as ks
from kernelsketch.attn.kde import KDEConfig

from ..reference import naive_attention


def qkv(seed, N, M, D=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 2, N, D, generator=g, dtype=torch.float64),
            torch.randn(1, 1, M, D, generator=g, dtype=torch.float64),
            torch.randn(1, 1, M, D, generator=g, dtype=torch.float64))


def kde(q, k, v, cfg, seed, **kw):
    return ks.attention(q, k, v, method="kde", config=cfg,
                        generator=torch.Generator().manual_seed(seed), **kw)


def test_smallest_valid_config_values_and_negative_exact_key_counts():
    KDEConfig(lsh_bits=1, kde_samples=1, sample_size=0, min_seq_len=0, sink=0, window=0)
    for field in ("sink", "window"):
        with pytest.raises(ValueError, match=field):
            KDEConfig(**{field: -1})


def test_full_budget_is_one_block_and_nothing_else(seed):
    cfg = KDEConfig.full_budget(300)
    assert (cfg.block_size, cfg.sample_size, cfg.min_seq_len, cfg.sink, cfg.window) == (
        300, 0, 0, 0, 0)
    assert KDEConfig.full_budget(0).block_size == 1
    q, k, v = qkv(seed, 300, 300)  # longer than the default block of 256
    torch.testing.assert_close(kde(q, k, v, cfg, seed), naive_attention(q, k, v))


@pytest.mark.parametrize("is_causal", [False, True])
def test_a_sample_of_every_key_is_exact_and_one_key_is_a_sample(is_causal, seed):
    M = 64
    q, k, v = qkv(seed, M, M)
    ref = naive_attention(q, k, v, is_causal=is_causal)
    # sample_size == M: every key once with weight 1 (not M importance draws).
    every = KDEConfig(block_size=8, sample_size=M, kde_samples=8, min_seq_len=0, window=0)
    torch.testing.assert_close(kde(q, k, v, every, seed, is_causal=is_causal), ref)
    one = KDEConfig(block_size=8, sample_size=1, kde_samples=8, min_seq_len=0, window=0)
    none = KDEConfig(block_size=8, sample_size=0, kde_samples=8, min_seq_len=0, window=0)
    assert not torch.allclose(kde(q, k, v, one, seed, is_causal=is_causal),
                              kde(q, k, v, none, seed, is_causal=is_causal))


@pytest.mark.filterwarnings("ignore:method=.* computed exact attention")
@pytest.mark.parametrize("is_causal", [False, True])
def test_exact_fallback_returns_the_lse(is_causal, seed):
    q, k, v = qkv(seed, 40, 40)
    out, lse = kde(q, k, v, KDEConfig(min_seq_len=64), seed, is_causal=is_causal, return_lse=True)
    ref, ref_lse = naive_attention(q, k, v, is_causal=is_causal, return_lse=True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lse, ref_lse)
