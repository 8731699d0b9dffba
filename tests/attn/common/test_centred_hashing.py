"""Centred LSH hashing of the sortLSH methods (attn/common/sortlsh/blocks.lsh_buckets).

Each hash call centres its rows by their own mean before the sign projection, so the
partition of queries and keys into sorted blocks does not depend on a vector shared by
all queries or by all keys (pretrained LMs have a large one in each, pointing apart;
docs/hyper.md). Only the partition changes: the estimator stays unbiased.
"""


import pytest
import torch

import kernelsketch as ks
from kernelsketch.attn.common.sortlsh import block_diagonal_attention
from kernelsketch.attn.common.sortlsh.blocks import lsh_buckets
from kernelsketch.attn.hyper import HyperConfig
from kernelsketch.attn.hyper import method as hyper_method
from kernelsketch.attn.kde import KDEConfig
from kernelsketch.attn.kde import method as kde_method
from kernelsketch.sketch.lsh import AngularLSH

from ..reference import (
    NORMALISER_Z_MAX,
    causal_normaliser_draws,
    naive_attention,
    random_qkv,
)

CONFIGS = {"hyper": HyperConfig, "kde": KDEConfig}
MODULES = {"hyper": hyper_method, "kde": kde_method}


def offset_qkv(generator, B=1, Hq=4, Hkv=2, n=96, D=8, strength=3.0):
    """Random q, k, v plus one common vector per head in q and its opposite (scaled) in k:
    the shape of a pretrained LM's queries and keys (each mean about as large as the rows,
    the two means pointing apart)."""
    q, k, v = random_qkv(B, Hq, Hkv, n, n, D, generator=generator)
    c = torch.randn(1, Hkv, 1, D, generator=generator, dtype=q.dtype)
    c = strength * c / c.norm(dim=-1, keepdim=True)
    return q + c.repeat_interleave(Hq // Hkv, dim=1), k - 0.7 * c, v


def test_lsh_buckets_hash_the_centred_rows(torch_generator, seed):
    lsh = AngularLSH(8, 5, seed=seed)
    x = torch.randn(2, 3, 200, 8, generator=torch_generator, dtype=torch.float64) + 2.0
    assert torch.equal(lsh_buckets(lsh, x), lsh(x - x.mean(dim=-2, keepdim=True)))
    mean = torch.randn(2, 3, 1, 8, generator=torch_generator, dtype=torch.float64)
    assert torch.equal(lsh_buckets(lsh, x, mean), lsh(x - mean))
    # a 5-d x (the context-parallel layout [B, H, G, n, D]) centred by a broadcast mean
    x5 = x.reshape(2, 3, 4, 50, 8)
    assert torch.equal(lsh_buckets(lsh, x5, mean.unsqueeze(2)), lsh(x5 - mean.unsqueeze(2)))


@pytest.mark.parametrize("side", ["queries", "keys"])
def test_blocks_are_invariant_to_a_vector_added_to_every_row(side, torch_generator, seed):
    q, k, v = random_qkv(2, 3, 3, 160, 128, 8, generator=torch_generator)
    lsh = AngularLSH(8, 6, seed=seed)
    c = 4.0 * torch.randn(1, 3, 1, 8, generator=torch_generator, dtype=q.dtype)
    q2, k2 = (q + c, k) if side == "queries" else (q, k + c)
    _, _, blk_q, blk_k = block_diagonal_attention(q, k, v, lsh, 8, scale=0.3)
    _, _, blk_q2, blk_k2 = block_diagonal_attention(q2, k2, v, lsh, 8, scale=0.3)
    assert torch.equal(blk_q, blk_q2) and torch.equal(blk_k, blk_k2)
    # the vector is large against the rows: hashing x + c uncentred moves most rows' buckets
    x, x2 = (q, q2) if side == "queries" else (k, k2)
    assert (lsh(x) != lsh(x2)).float().mean() > 0.5


@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("is_causal", [False, True])
def test_output_is_invariant_to_a_vector_added_to_every_key(method, fast, is_causal, seed,
                                                            monkeypatch):
    # softmax(q·(k_j + c)) = softmax(q·k_j): with the partition unchanged the hash, blocks
    # and samples are the same draws (hyper samples uniformly; KDEformer's AMM distribution
    # is invariant: its row and column estimates shift by q·c alike), so the estimate is the
    # same up to rounding, on the torch path and the fast path (forced in float64).
    if fast:
        monkeypatch.setattr(MODULES[method], "use_fused", lambda q, v, config: True)
    g = torch.Generator().manual_seed(seed)
    q, k, v = offset_qkv(g, n=128)
    c = 5.0 * torch.randn(1, 2, 1, 8, generator=g, dtype=q.dtype)
    cfg = CONFIGS[method](block_size=8, sample_size=8, lsh_bits=5, min_seq_len=16, sink=2,
                          window=4)

    def run(keys):
        return ks.attention(q, keys, v, method=method, config=cfg, is_causal=is_causal,
                            generator=torch.Generator().manual_seed(seed))

    out, shifted = run(k), run(k + c)
    torch.testing.assert_close(shifted, out, rtol=1e-9, atol=1e-9)
    ref = naive_attention(q, k, v, is_causal=is_causal)
    assert (out - ref).abs().max() > 1e-3  # a sketch, not exact attention


@pytest.mark.statistical
@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize("fast", [False, True])
def test_normaliser_stays_unbiased_with_offset_queries_and_keys(method, fast, seed, monkeypatch,
                                                                measure):
    # As test_exact_keys.py's unbiasedness test, on inputs whose queries and keys share large
    # opposite components (the partition is the centred one). Independent draws: one per
    # batch entry (equal entries: the same means, hash and blocks; the samples differ).
    if fast:
        monkeypatch.setattr(MODULES[method], "use_fused", lambda q, v, config: True)
    g = torch.Generator().manual_seed(seed)
    q, k, v = offset_qkv(g, Hq=2, Hkv=1, n=64, strength=2.0)
    cfg = CONFIGS[method](block_size=4, sample_size=3, lsh_bits=3, min_seq_len=8, sink=2,
                          window=3)
    gap, sem, truth = causal_normaliser_draws(method, q, k, v, cfg, g, trials=400)
    measure("max_z", float((gap / sem)[sem > 0].max()))
    # Mean within NORMALISER_Z_MAX standard errors of the truth on every row (the bound's
    # measurement: reference.py); rows the exact parts cover have sem = 0 and must match.
    assert torch.all(gap <= NORMALISER_Z_MAX * sem + 1e-9 * truth)
