import itertools

import torch

from kernelsketch.attn.common.exact import partial_attention
from kernelsketch.attn.common.merge import merge_many, merge_partials

from ..reference import naive_attention, random_qkv


def test_merge_of_disjoint_key_sets_equals_full_attention():
    q, k, v = random_qkv(2, 3, 3, 20, 50, 8)
    cuts = [0, 7, 31, 50]
    parts = [partial_attention(q, k[:, :, a:b], v[:, :, a:b], scale=0.4)
             for a, b in itertools.pairwise(cuts)]
    out, lse = merge_many(parts)
    ref, ref_lse = naive_attention(q, k, v, scale=0.4, return_lse=True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lse, ref_lse)


def test_merge_with_fully_masked_rows_has_no_nan_in_value_or_gradient(torch_generator):
    out_a = torch.randn(4, 3, dtype=torch.float64, requires_grad=True, generator=torch_generator)
    lse_a = torch.tensor([0.5, float("-inf"), float("-inf"), 2.0], dtype=torch.float64,
                         requires_grad=True)
    out_b = torch.randn(4, 3, dtype=torch.float64, requires_grad=True, generator=torch_generator)
    lse_b = torch.tensor([float("-inf"), 1.0, float("-inf"), -1.0], dtype=torch.float64,
                         requires_grad=True)
    out, lse = merge_partials(out_a, lse_a, out_b, lse_b)
    assert torch.equal(out[2], torch.zeros(3, dtype=torch.float64)) and torch.isneginf(lse[2])
    torch.testing.assert_close(out[0], out_a[0])
    torch.testing.assert_close(out[1], out_b[1])
    torch.testing.assert_close(lse[3], torch.logaddexp(lse_a[3], lse_b[3]))
    (out.sum() + torch.where(torch.isfinite(lse), lse, 0).sum()).backward()
    for t in (out_a, lse_a, out_b, lse_b):
        assert torch.isfinite(t.grad).all()


def test_merge_keeps_lse_differentiable():
    # d lse / d lse_a = softmax weight of part a: a detached lse would give 0.
    lse_a = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    lse_b = torch.tensor([-0.2], dtype=torch.float64)
    o = torch.ones(1, 2, dtype=torch.float64)
    _, lse = merge_partials(o, lse_a, o, lse_b)
    lse.sum().backward()
    torch.testing.assert_close(lse_a.grad, torch.sigmoid(lse_a.detach() - lse_b))
