"""HyperAttention's sampled keys carry log-weights -log(s p_j) of the documented distribution.

Found by tools/mutation.py: importance sampling is unbiased for any distribution,
so every change to ``p_j = 1/(2M) + ‖v_j‖/(2 Σ‖v‖)`` (its constants, the sum's
axis, the normalisation of v) passed the error and unbiasedness tests.
"""

import pytest
import torch

from kernelsketch.attn.hyper import HyperConfig
from kernelsketch.attn.hyper.naive import draw_samples


@pytest.mark.parametrize("sampling", ["uniform", "value_norm"])
def test_log_weights_are_minus_log_of_s_times_the_probability(sampling, seed):
    g = torch.Generator().manual_seed(seed)
    B, H, M, D, s = 2, 2, 50, 8, 16
    k = torch.randn(B, H, M, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, M, D, generator=g, dtype=torch.float64)
    v = v * (1 + 5 * torch.rand(B, H, M, 1, generator=g, dtype=torch.float64))  # uneven norms
    v[1] *= 1e3  # per-(batch, head) normalisation: the scale of v must not matter
    cfg = HyperConfig(block_size=8, sample_size=s, min_seq_len=0, sampling=sampling)
    idx, log_w = draw_samples(k, v, cfg, torch.Generator().manual_seed(seed + 1))
    assert idx.shape == log_w.shape == (B, H, s)
    if sampling == "uniform":
        p = torch.full((B, H, M), 1 / M, dtype=torch.float64)
    else:
        norms = torch.linalg.vector_norm(v, dim=-1)
        p = 0.5 / M + 0.5 * norms / norms.sum(-1, keepdim=True)
    want = -torch.log(s * torch.gather(p, -1, idx))
    torch.testing.assert_close(log_w.double(), want, rtol=1e-5, atol=1e-6)
    again = draw_samples(k, v, cfg, torch.Generator().manual_seed(seed + 1))[0]
    assert torch.equal(idx, again)  # drawn from the given generator
