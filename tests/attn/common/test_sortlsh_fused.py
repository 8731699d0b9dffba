"""The fused HyperAttention Triton kernel against its torch twins (TRITON_INTERPRET=1 on CPU).

KDEformer runs through the same kernel (its AMM samples in place of the
uniform ones), so its fused path is checked here too.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from kernelsketch.attn.hyper import HyperConfig, hyper_noncausal
from kernelsketch.attn.hyper.fused import hyper_noncausal_fused
from kernelsketch.attn.kde import KDEConfig, kde_noncausal
from kernelsketch.attn.kde.fused import kde_noncausal_fused

from ..reference import naive_attention, random_qkv

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32] + ([torch.bfloat16, torch.float16] if DEVICE == "cuda" else [])


def gen(seed):
    return torch.Generator(device=DEVICE).manual_seed(seed)


@pytest.mark.parametrize("shape", [(1, 2, 2, 70, 70, 16, 16), (2, 4, 2, 50, 90, 16, 32),
                                   (1, 3, 1, 33, 130, 32, 16)])
@pytest.mark.parametrize("sampling", ["uniform", "value_norm"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_kernel_matches_torch_path(shape, sampling, dtype):
    B, Hq, Hkv, N, M, D, Dv = shape
    q, k, v = random_qkv(B, Hq, Hkv, N, M, D, Dv, dtype=dtype, device=DEVICE)
    cfg = HyperConfig(block_size=16, sample_size=24, min_seq_len=0, lsh_bits=4, sampling=sampling)
    scale = D ** -0.5
    out, lse = hyper_noncausal_fused(q, k, v, scale, cfg, gen(3))
    ref_out, ref_lse = hyper_noncausal(q, k, v, scale, cfg, gen(3))
    tol = 2e-3 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), ref_out.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(lse, ref_lse.float(), atol=tol, rtol=tol)


def test_fused_kernel_is_exact_when_blocks_or_samples_cover_everything():
    q, k, v = random_qkv(1, 2, 1, 40, 75, 16, dtype=torch.float32, device=DEVICE)
    ref, ref_lse = naive_attention(q, k, v, return_lse=True)
    for cfg in (HyperConfig.full_budget(75), HyperConfig(block_size=8, sample_size=500,
                                                         min_seq_len=0, lsh_bits=3)):
        out, lse = hyper_noncausal_fused(q, k, v, 0.25, cfg, gen(0))
        torch.testing.assert_close(out.double(), ref.to(out.device), atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(lse.double(), ref_lse.to(lse.device), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("cfg", [
    KDEConfig(block_size=16, sample_size=24, kde_samples=16, min_seq_len=0, lsh_bits=4),
    KDEConfig(block_size=16, sample_size=0, min_seq_len=0, lsh_bits=4),
])
def test_kde_fused_path_matches_torch_path(cfg):
    q, k, v = random_qkv(2, 4, 2, 50, 90, 16, 24, dtype=torch.float32, device=DEVICE)
    out, lse = kde_noncausal_fused(q, k, v, 0.25, cfg, gen(3))
    ref_out, ref_lse = kde_noncausal(q, k, v, 0.25, cfg, gen(3))
    torch.testing.assert_close(out, ref_out, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=2e-3)
