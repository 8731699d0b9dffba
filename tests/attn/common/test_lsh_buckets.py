"""sortlsh.blocks.lsh_buckets (the attention methods' fast bucket ids) equals AngularLSH on
rows centred by a given mean (zero here; the default centring: test_centred_hashing.py)."""

import pytest
import torch

from kernelsketch.attn.common.sortlsh.blocks import lsh_buckets
from kernelsketch.sketch.lsh import AngularLSH, gray_code


@pytest.mark.parametrize("n_bits", [1, 7, 16, 17, 24])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_lsh_buckets_equal_the_module(n_bits, dtype, torch_generator, seed):
    lsh = AngularLSH(16, n_bits, seed=seed)
    x = torch.randn(2, 3, 300, 16, generator=torch_generator).to(dtype)
    ids = lsh_buckets(lsh, x, x.new_zeros(1, 16))  # uncentred (centring: test_centred_hashing)
    assert ids.dtype == torch.int64 and ids.shape == (2, 3, 300)
    assert torch.equal(ids, lsh(x))
    if dtype != torch.float64:  # lower precisions may flip a sign near a hyperplane
        return
    # Float64 oracle of the sign codes: gray_code(id) is the code of x's signs.
    bits = (x.double() @ lsh.planes.double()) > 0
    codes = (bits.long() * (2 ** torch.arange(n_bits))).sum(-1)
    assert torch.equal(gray_code(ids), codes)


def test_lsh_buckets_hit_every_bucket_of_a_small_hash(torch_generator, seed):
    lsh = AngularLSH(8, 3, seed=seed)
    ids = lsh_buckets(lsh, torch.randn(4000, 8, generator=torch_generator) + 3.0)
    assert torch.equal(ids.unique(), torch.arange(8))


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_lsh_buckets_of_a_view_folded_equal_those_of_the_folded_copy(kv_heads, torch_generator,
                                                                     seed):
    # The causal recursion's half blocks (batch = blocks) with their GQA groups folded into
    # rows, hashed in place: the ids (and each group's centring mean) of the folded copy.
    from kernelsketch.attn.common.gqa import fold_groups

    lsh = AngularLSH(16, 7, seed=seed)
    q = torch.randn(1, 4, 400, 16, generator=torch_generator, dtype=torch.float64) + 1.5
    view = q.reshape(1, 4, 2, 2, 100, 16)[:, :, :, 1].transpose(1, 2).reshape(2, 4, 100, 16)
    assert not view.is_contiguous()
    folded = fold_groups(view.contiguous(), kv_heads)
    ids = lsh_buckets(lsh, view, kv_heads=kv_heads)
    assert ids.shape == (2, kv_heads, 400 // kv_heads)
    assert torch.equal(ids, lsh_buckets(lsh, folded))
    assert torch.equal(ids, lsh(folded - folded.mean(dim=-2, keepdim=True)))
