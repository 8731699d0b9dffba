"""Gaps a sampled mutation run (tools/mutation.py, attn.hyper, --sample 40 --sample-seed 22)
found in the HyperAttention tests (issue 22): each test fails on the mutant it names."""

import pytest
import torch

import kernelsketch as ks
from kernelsketch.attn.hyper import HyperConfig
from kernelsketch.attn.hyper.method import use_fused

from ..reference import naive_attention


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_half_and_single_precision_take_the_flash_path(dtype, torch_generator):
    # use_fused's docstring: one fused call per estimate with SDPA's flash kernel on CPU
    # float32/bf16/fp16 (one hash round); float64 keeps the torch path. Mutant: `and` for
    # `or` between the Triton and flash conditions never takes the CPU flash path (the torch
    # path computes the same estimator, so no output test sees it, only the speed).
    q = torch.randn(1, 2, 64, 8, generator=torch_generator).to(dtype)
    v = torch.randn(1, 2, 64, 8, generator=torch_generator).to(dtype)
    assert use_fused(q, v, HyperConfig())
    assert not use_fused(q, v, HyperConfig(hash_rounds=2))
    assert not use_fused(q.double(), v.double(), HyperConfig())


@pytest.mark.parametrize("is_causal", [False, True])
def test_paper_config_is_exact_up_to_4096_tokens(is_causal, torch_generator):
    # HyperConfig.paper(): "exact attention up to 4096 tokens". Mutant: paper() without
    # min_seq_len=4096 falls back to the default 1024 and approximates at 4096 tokens
    # (causal: the recursion's 2048-key blocks; no exact sink or window), far from the
    # float64 reference.
    n, d = 4096, 4
    q, k, v = (torch.randn(1, 1, n, d, generator=torch_generator, dtype=torch.float64)
               for _ in range(3))
    with pytest.warns(Warning, match="computed exact attention"):
        out = ks.attention(q, k, v, method="hyper", config=HyperConfig.paper(),
                           is_causal=is_causal, generator=torch_generator)
    ref = naive_attention(q, k, v, is_causal=is_causal)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def test_auto_budget_predicts_with_the_value_norm_distribution(torch_generator, monkeypatch):
    # hyper_auto with sampling="value_norm" (sampled run --sample 80 --sample-seed 23): the
    # predictor's distribution must be p_j = 1/(2M) + ‖v_j‖/(2 Σ‖v‖) of each level's sampled
    # keys. Mutant: sampling_probabilities(None, config) (an AttributeError the uniform
    # default never reaches).
    from kernelsketch.attn.hyper import method as hyper_method

    seen = []
    real = hyper_method.predict_sample_size

    def recording(*args, probabilities, **kwargs):
        def probs(ql, kr, vr, bq, bk, ke):
            p = probabilities(ql, kr, vr, bq, bk, ke)
            seen.append((vr, p))
            return p
        return real(*args, probabilities=probs, **kwargs)

    monkeypatch.setattr(hyper_method, "predict_sample_size", recording)
    g = torch_generator
    q = torch.randn(1, 2, 128, 8, generator=g, dtype=torch.float64)
    k = torch.randn(1, 2, 128, 8, generator=g, dtype=torch.float64)
    v = torch.randn(1, 2, 128, 8, generator=g, dtype=torch.float64) * torch.rand(
        1, 2, 128, 1, generator=g, dtype=torch.float64)  # unequal value norms
    cfg = HyperConfig(block_size=16, sample_size=8, min_seq_len=0, sink=0, window=0,
                      sampling="value_norm")
    choice = hyper_method.hyper_auto(q, k, v, is_causal=False, scale=0.35, error=0.3,
                                     config=cfg, generator=g, rows=32)
    assert choice.config.sampling == "value_norm" and seen
    for vr, p in seen:
        norms = vr.norm(dim=-1)
        want = 0.5 / vr.shape[2] + 0.5 * norms / norms.sum(-1, keepdim=True)
        torch.testing.assert_close(p, want, rtol=1e-12, atol=0)
