"""Merging with an empty part (lse = -inf), and the accumulation dtype.

Found by tools/mutation.py: ``nonzero = total > 1`` for ``> 0`` (a row whose
other part is empty has total exactly 1) turned the merged lse into -inf while
leaving the output right, and no test read the lse of such a row.
"""

import pytest
import torch

from kernelsketch.attn.common.merge import accumulation_dtype, merge_many, merge_partials


def test_merging_with_an_empty_part_keeps_the_other_part(seed):
    g = torch.Generator().manual_seed(seed)
    out_a = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    lse_a = 3 * torch.randn(2, 5, generator=g, dtype=torch.float64)
    empty_out = torch.zeros_like(out_a)
    empty_lse = torch.full_like(lse_a, float("-inf"))
    for out, lse in (merge_partials(out_a, lse_a, empty_out, empty_lse),
                     merge_partials(empty_out, empty_lse, out_a, lse_a),
                     merge_many([(empty_out, empty_lse), (out_a, lse_a), (empty_out, empty_lse)])):
        torch.testing.assert_close(out, out_a, rtol=0, atol=0)
        torch.testing.assert_close(lse, lse_a, rtol=0, atol=0)


@pytest.mark.parametrize("dtype,acc", [(torch.float64, torch.float64), (torch.float32, torch.float32),
                                       (torch.float16, torch.float32), (torch.bfloat16, torch.float32)])
def test_accumulation_dtype(dtype, acc):
    assert accumulation_dtype(dtype) is acc
