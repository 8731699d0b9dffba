"""The fused sortLSH Triton kernels (forward) against an independent float64 reference.

``fused_sorted_attention`` (HyperAttention's and KDEformer's kernel pair) runs
compiled on a CUDA machine and interpreted on CPU (``triton_device`` fixture,
tests/attn/conftest.py), in float32 and float16 on both and bfloat16 on CUDA;
the reference materialises every row's block keys and samples
(sortlsh_reference.py).
"""

import pytest
import torch

from kernelsketch.attn.common.sortlsh import fused_kernels_apply

from ..reference import naive_attention
from .sortlsh_reference import estimator_inputs, naive_sorted_sampled

pytest.importorskip("triton")

NO_BF16_INTERPRETER = ("Triton's interpreter has no bfloat16 arithmetic (it multiplies the "
                       "uint16 bit patterns: triton-lang/triton#11584); bfloat16 runs compiled "
                       "on CUDA and is compiled for sm_90 / sm_80 in tests/attn/test_aot.py")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Relative Frobenius error of out (and absolute error of lse / 10) against the float64
# reference, measured in the interpreter over SHAPES with 4 seeds: largest float32 1.6e-7
# (lse 5.5e-7), float16 3.0e-4 (p rounded to float16 before p·v). Thresholds >= 13x that;
# bfloat16 (8x float16's rounding) and TF32 (float32 on CUDA, float16's mantissa) with the
# same margin. Deterministic inputs: a failure is a kernel change, not chance.
TOL = {torch.float32: 2e-6, torch.float16: 4e-3, torch.bfloat16: 3e-2}
TOL_CUDA_FP32 = 4e-3
SHAPES = [  # (B, H, R, M, D, Dv, S, num_blocks)
    (1, 2, 70, 70, 16, 16, 24, 4),
    (2, 1, 50, 90, 40, 24, 24, 3),  # R != M, D and Dv masked in their tiles
    (1, 1, 33, 130, 64, 32, 70, 5),  # more samples than one key tile
]


def tolerance(dtype, device):
    return TOL_CUDA_FP32 if dtype == torch.float32 and device == "cuda" else TOL[dtype]


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


def run_both(shape, dtype, device, seed, **kw):
    from kernelsketch.attn.common.sortlsh.fused import fused_sorted_attention

    B, H, R, M, D, Dv, S, nb = shape
    (q, k, v), consts, blocks = estimator_inputs(B, H, R, M, D, Dv, S, nb, dtype=dtype,
                                                 device=device, seed=seed, **kw)
    got = fused_sorted_attention(q, k, v, *consts, scale=D ** -0.5, **blocks)
    ref = naive_sorted_sampled(q, k, v, *consts, scale=D ** -0.5, **blocks)
    return got, ref, (q, k, v)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_the_naive_reference(triton_device, shape, dtype):
    if dtype == torch.bfloat16 and triton_device == "cpu":
        pytest.skip(NO_BF16_INTERPRETER)
    (out, lse), (ref_out, ref_lse), (_, _, v) = run_both(shape, dtype, triton_device, seed=3)
    assert out.dtype == v.dtype and lse.dtype == torch.float32
    tol = tolerance(dtype, triton_device)
    assert rel(out, ref_out) < tol
    assert float((lse.detach().double().cpu() - ref_lse.detach().cpu()).abs().max()) < tol * 10


def test_every_row_sees_every_key_once_when_samples_cover_the_rest(triton_device):
    # All keys sampled with weight 1: block keys are counted by the block part and masked
    # among the samples, so the estimate is exact attention.
    from kernelsketch.attn.common.sortlsh.fused import fused_sorted_attention

    B, H, R, M, D = 1, 2, 40, 75, 16
    (q, k, v), (perm_q, perm_k, _, _, _), blocks = estimator_inputs(
        B, H, R, M, D, D, 1, 3, dtype=torch.float32, device=triton_device, seed=5)
    idx = torch.arange(M, device=triton_device).expand(B, H, M)
    key_blk = torch.empty_like(perm_k)
    key_blk.scatter_(2, perm_k, torch.arange(M, device=triton_device).expand_as(perm_k)
                     // blocks["k_block"])
    out, lse = fused_sorted_attention(q, k, v, perm_q, perm_k, idx, torch.zeros(B, H, M),
                                      torch.gather(key_blk, 2, idx), scale=0.25, **blocks)
    ref, ref_lse = naive_attention(q, k, v, scale=0.25, return_lse=True)
    tol = tolerance(torch.float32, triton_device)
    assert rel(out, ref) < tol and rel(lse, ref_lse) < tol


def test_no_samples_is_the_block_diagonal(triton_device):
    from kernelsketch.attn.common.sortlsh.blocks import no_samples
    from kernelsketch.attn.common.sortlsh.fused import fused_sorted_attention

    (q, k, v), (perm_q, perm_k, *_), blocks = estimator_inputs(
        2, 1, 45, 60, 16, 24, 1, 4, dtype=torch.float32, device=triton_device, seed=6)
    idx, log_w = no_samples(2, 1, triton_device)
    out, lse = fused_sorted_attention(q, k, v, perm_q, perm_k, idx, log_w, idx.int(),
                                      scale=0.25, **blocks)
    ref, ref_lse = naive_sorted_sampled(q, k, v, perm_q, perm_k, idx, log_w, idx.int(),
                                        scale=0.25, **blocks)
    tol = tolerance(torch.float32, triton_device)
    assert rel(out, ref) < tol and rel(lse, ref_lse) < tol


@pytest.mark.parametrize("dtype,d,limit", [(torch.float16, 264, 256), (torch.float32, 136, 128)])
def test_heads_wider_than_the_kernels_take_are_refused_with_a_clear_error(dtype, d, limit):
    from kernelsketch.attn.common.sortlsh.fused import fused_sorted_attention

    (q, k, v), consts, blocks = estimator_inputs(1, 1, 8, 8, d, 16, 2, 2, dtype=dtype,
                                                 device="cpu", seed=0)
    with pytest.raises(ValueError, match=rf"D must be in \[1, {limit}\]"):
        fused_sorted_attention(q, k, v, *consts, scale=0.1, **blocks)


def test_the_gate_takes_cuda_heads_up_to_256_half_128_float32(monkeypatch):
    from kernelsketch.attn.common import sortlsh

    class Cuda(torch.Tensor):  # a CPU tensor that reports a CUDA device (the gate only looks)
        is_cuda = True

    def x(d, dtype=torch.float16):
        return torch.zeros(1, 1, 4, d, dtype=dtype).as_subclass(Cuda)

    assert not fused_kernels_apply(torch.zeros(1, 1, 4, 64, dtype=torch.float16))  # CPU
    assert fused_kernels_apply(x(256)) and fused_kernels_apply(x(64, torch.bfloat16))
    assert not fused_kernels_apply(x(264)) and not fused_kernels_apply(x(64), x(320))
    # float32: TF32 products, taken only where torch multiplies float32 in TF32.
    monkeypatch.setattr(sortlsh, "tf32_allowed", lambda: False)
    assert not fused_kernels_apply(x(64, torch.float32))
    monkeypatch.setattr(sortlsh, "tf32_allowed", lambda: True)
    assert fused_kernels_apply(x(128, torch.float32))
    assert not fused_kernels_apply(x(256, torch.float32))  # float32 tiles of 256 overflow
    assert not fused_kernels_apply(x(64, torch.float64))
