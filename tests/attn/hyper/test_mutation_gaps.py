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
    rows_seen = []
    inner = recording

    def with_rows(*args, **kwargs):  # rows must reach the predictor (full run at d1734e3)
        rows_seen.append(kwargs.get("rows"))
        return inner(*args, **kwargs)

    monkeypatch.setattr(hyper_method, "predict_sample_size", with_rows)
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
    assert rows_seen == [32] and choice.rows == 32 and choice.target == 0.3
    for vr, p in seen:
        norms = vr.norm(dim=-1)
        want = 0.5 / vr.shape[2] + 0.5 * norms / norms.sum(-1, keepdim=True)
        torch.testing.assert_close(p, want, rtol=1e-12, atol=0)


class _CudaFlag(torch.Tensor):
    """A CPU tensor whose ``is_cuda`` is True (what the kernel gate reads of the device)."""

    @property
    def is_cuda(self):
        return True


@pytest.mark.parametrize("dv,expected", [(512, False), (64, True)])
def test_fused_path_checks_the_value_head_dim(dv, expected, monkeypatch):
    # use_fused / hyper_forward (full attn.hyper run at d1734e3): on CUDA the Triton kernels
    # take q AND v head dims up to 256 (bfloat16). Mutants: fused_kernels_apply(q, None),
    # (v), (q, ) and hyper_forward's use_fused(q, None, config). The CUDA gate is emulated:
    # is_cuda, Triton present, no CPU flash kernel (as on a GPU).
    from kernelsketch.attn.common import sortlsh
    from kernelsketch.attn.hyper import fused
    from kernelsketch.attn.hyper import method as hyper_method

    monkeypatch.setattr(sortlsh, "triton_available", lambda: True)
    monkeypatch.setattr(hyper_method, "flash_applies", lambda q: False)
    q = torch.zeros(1, 2, 32, 64, dtype=torch.bfloat16).as_subclass(_CudaFlag)
    k = torch.zeros(1, 2, 32, 64, dtype=torch.bfloat16)
    v = torch.zeros(1, 2, 32, dv, dtype=torch.bfloat16)
    assert use_fused(q, v, HyperConfig()) is expected

    class Taken(Exception):
        pass

    def path(name):
        def run(*args, **kwargs):
            raise Taken(name)
        return run

    monkeypatch.setattr(hyper_method, "hyper_noncausal", path("torch"))
    monkeypatch.setattr(fused, "hyper_noncausal_fused", path("fused"))
    cfg = HyperConfig(block_size=16, sample_size=8, min_seq_len=0, sink=0, window=0)
    with pytest.raises(Taken) as taken:
        hyper_method.hyper_forward(q, k, v, is_causal=False, scale=0.125, config=cfg,
                                   generator=None, need_lse=False)
    assert str(taken.value) == ("fused" if expected else "torch")


def test_paper_config_has_no_sink_or_window_and_sketches_beyond_4096_keys(torch_generator):
    # HyperConfig.paper(): "no exact sink or window, exact attention up to 4096 tokens"
    # (mutants: sink or window dropped or 1, min_seq_len 4097): 4096 keys fall back to exact
    # (ExactFallbackWarning), 4097 run the sketch.
    import warnings

    from kernelsketch.attn.common.exact import ExactFallbackWarning

    cfg = HyperConfig.paper()
    assert (cfg.sink, cfg.window) == (0, 0)
    g = torch_generator
    for m, exact in ((4096, True), (4097, False)):
        q = torch.randn(1, 1, 4, 16, generator=g)
        k = torch.randn(1, 1, m, 16, generator=g)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            ks.attention(q, k, k, method="hyper", config=cfg, generator=g)
        assert any(r.category is ExactFallbackWarning for r in record) is exact, m


def test_sampling_every_key_with_two_blocks_is_exact_attention(torch_generator):
    # hyper_noncausal samples whenever there is more than one block (mutant: num_blocks > 2
    # drops the pairs between two blocks): with sample_size = M every key outside a row's
    # block enters once at weight 1, so two blocks give exact attention (float64).
    from kernelsketch.attn.hyper.naive import hyper_noncausal

    g = torch_generator
    q = torch.randn(2, 3, 20, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, 3, 32, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, 3, 32, 5, generator=g, dtype=torch.float64)
    cfg = HyperConfig(block_size=16, sample_size=32, min_seq_len=0, sink=0, window=0)
    out, lse = hyper_noncausal(q, k, v, 0.35, cfg, g)
    s = q @ k.transpose(-1, -2) * 0.35
    torch.testing.assert_close(out, torch.softmax(s, -1) @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, torch.logsumexp(s, -1), rtol=1e-12, atol=1e-12)
