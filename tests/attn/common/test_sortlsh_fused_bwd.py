"""Gradients of the fused sortLSH Triton kernels against the float64 reference's autograd.

The loss (out·W).sum() + (lse·w).sum() with random W, w checks the gradients
of both outputs (the causal recursion merges partial results by their lse).
Compiled on CUDA, interpreted on CPU (``triton_device``, tests/attn/conftest.py).
"""

import pytest
import torch

from .sortlsh_reference import estimator_inputs, naive_sorted_sampled
from .test_sortlsh_fused import NO_BF16_INTERPRETER, SHAPES, rel

pytest.importorskip("triton")

# Relative Frobenius error of dq, dk, dv, measured in the interpreter over SHAPES with 4 seeds:
# largest float32 3.2e-7, float16 4.4e-4 (dS and P rounded to float16 for their products).
# Thresholds >= 10x; bfloat16 8x float16's rounding, TF32 (float32 on CUDA) as float16.
TOL = {torch.float32: 5e-6, torch.float16: 5e-3, torch.bfloat16: 4e-2}
TOL_CUDA_FP32 = 5e-3


def grads_of_both(shape, dtype, device, seed, **kw):
    from kernelsketch.attn.common.sortlsh.fused import fused_sorted_attention

    B, H, R, M, D, Dv, S, nb = shape
    (q, k, v), consts, blocks = estimator_inputs(B, H, R, M, D, Dv, S, nb, dtype=dtype,
                                                 device=device, seed=seed, **kw)
    gen = torch.Generator().manual_seed(seed + 1)
    W = torch.randn(B, H, R, Dv, generator=gen, dtype=torch.float64).to(device)
    w = torch.randn(B, H, R, generator=gen, dtype=torch.float64).to(device)

    def grads(out, lse):
        lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        loss = (out.double() * W).sum() + (lse.double() * w).sum()
        return torch.autograd.grad(loss, (q, k, v))

    got = grads(*fused_sorted_attention(q, k, v, *consts, scale=D ** -0.5, **blocks))
    ref = grads(*naive_sorted_sampled(q, k, v, *consts, scale=D ** -0.5, **blocks))
    return got, ref, (q, k, v)


def assert_grads_close(got, ref, inputs, tol):
    for name, g, r, x in zip("qkv", got, ref, inputs):
        assert g.dtype == x.dtype, name
        assert torch.isfinite(g).all(), f"d{name} has non-finite entries"
        assert rel(g, r) < tol, f"d{name}: relative error {rel(g, r):.2e} >= {tol:.0e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gradients_match_the_naive_reference(triton_device, shape, dtype):
    if dtype == torch.bfloat16 and triton_device == "cpu":
        pytest.skip(NO_BF16_INTERPRETER)
    got, ref, inputs = grads_of_both(shape, dtype, triton_device, seed=7)
    tol = TOL_CUDA_FP32 if dtype == torch.float32 and triton_device == "cuda" else TOL[dtype]
    assert_grads_close(got, ref, inputs, tol)


def test_a_key_sampled_several_times_accumulates_every_copy(triton_device):
    # 40 draws from 3 keys: every sampled key repeats; its dk, dv sum over the copies.
    got, ref, inputs = grads_of_both((1, 2, 30, 20, 16, 16, 40, 3), torch.float32,
                                     triton_device, seed=4, dup=True)
    tol = TOL_CUDA_FP32 if triton_device == "cuda" else TOL[torch.float32]
    assert_grads_close(got, ref, inputs, tol)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs CUDA: on CPU hyper's fused path is SDPA's flash kernel "
                           "(common/sortlsh/estimate.py), not these Triton kernels")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_hyper_through_the_triton_kernels_matches_its_torch_path(dtype):
    # The method-level dispatch on CUDA: same hash and samples from the same generator.
    from kernelsketch.attn.hyper import HyperConfig, hyper_noncausal
    from kernelsketch.attn.hyper.fused import hyper_noncausal_fused

    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 300, 64, device="cuda", generator=gen).to(dtype)
               .requires_grad_(True) for _ in range(3))
    cfg = HyperConfig(block_size=64, sample_size=64, min_seq_len=0, lsh_bits=4)
    out, lse = hyper_noncausal_fused(q, k, v, 0.125, cfg, torch.Generator("cuda").manual_seed(3))
    ref, ref_lse = hyper_noncausal(q, k, v, 0.125, cfg, torch.Generator("cuda").manual_seed(3))
    assert rel(out, ref) < TOL[dtype] and rel(lse, ref_lse) < TOL[dtype]
