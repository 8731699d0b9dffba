"""KDEformer behaviour the mutation runs left untested (issue 22).

``k_exact`` into the AMM distribution: with always-exact keys (``sink`` / ``window``) the
row KDE D̂_i of the distribution must include their mass e^{s_ij} (they are part of every
row's normaliser D_i), while the sampled keys come from the other keys only. Only a run
that combines exact keys with sampling from the KDE distribution reaches it; the estimator
stays unbiased for any distribution, so only the distribution itself can show it. The
test records the distribution and the uniform draws of the real sampler and rebuilds it
in float64 (as tests/attn/kde/test_kde_weights.py does without exact keys).
"""

import pytest
import torch

from kernelsketch.attn.kde import KDEConfig
from kernelsketch.attn.kde import method as kde_method
from kernelsketch.attn.kde import naive as kde_module


def _record(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    monkeypatch.setattr(module, name, recording)
    return calls


@pytest.mark.parametrize("first,last", [(3, 0), (0, 4), (3, 4)])
def test_amm_distribution_counts_the_exact_keys_mass(first, last, seed, monkeypatch):
    # Kills `k_exact` dropped (None or omitted) in kde_noncausal's call to draw_samples and in
    # draw_samples' call to amm_probabilities (4 mutants of the full attn.kde run).
    draws = _record(monkeypatch, kde_module, "uniform_sample")
    dist = _record(monkeypatch, kde_module, "amm_probabilities")
    g = torch.Generator().manual_seed(seed)
    B, N, M, D = 2, 40, 64 + first + last, 8
    q = 1.5 * torch.randn(B, 1, N, D, generator=g, dtype=torch.float64)
    k = 1.5 * torch.randn(B, 1, M, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, 1, M, D, generator=g, dtype=torch.float64)
    # The exact keys are aligned with the first queries (logits ~3 sqrt(D) scale there):
    # those rows' D̂ with and without them differ by orders of magnitude.
    exact = list(range(first)) + list(range(M - last, M))
    k[:, :, exact] = 3.0 * q[:, :, : len(exact)] / q[:, :, : len(exact)].norm(dim=-1,
                                                                               keepdim=True)
    scale = D ** -0.5
    cfg = KDEConfig(block_size=16, sample_size=12, kde_samples=10, min_seq_len=0)
    kde_module.kde_noncausal(q, k, v, scale, cfg, g, exact_first=first, exact_last=last)

    assert len(dist) == 1
    (qf, k_rest, v_rest, covered, *_), _, got = dist[0]
    assert k_rest.shape[2] == M - first - last
    blk_q, blk_k = covered[0]
    (key_idx, key_w), (row_idx, _) = (out for _, _, out in draws[-2:])
    assert key_idx.shape == (B, 1, 10)
    s = qf @ k_rest.transpose(-1, -2) * scale  # [B, 1, N, M_rest]
    same = blk_q.unsqueeze(-1) == blk_k.unsqueeze(-2)
    e = s.exp()
    k_exact = k[:, :, exact]
    d_hat = (e * same).sum(-1) + (qf @ k_exact.transpose(-1, -2) * scale).exp().sum(-1)
    for t in range(key_idx.shape[-1]):
        j = key_idx[..., t, None, None].expand(B, 1, N, 1)
        outside = ~torch.gather(same, -1, j)[..., 0]
        d_hat = d_hat + key_w[..., t, None].double() * torch.gather(e, -1, j)[..., 0] * outside
    col = torch.zeros(B, 1, k_rest.shape[2], dtype=torch.float64)
    for t in range(row_idx.shape[-1]):
        r = row_idx[..., t, None, None].expand(B, 1, 1, k_rest.shape[2])
        e_r = torch.gather(e, 2, r)[:, :, 0]
        outside = ~torch.gather(same, 2, r)[:, :, 0]
        d_r = torch.gather(d_hat, 2, row_idx[..., t, None])
        col = col + e_r ** 2 / d_r ** 2 * outside
    vrow = (v_rest ** 2).sum(-1) + 1
    want = 0.5 * col / col.sum(-1, keepdim=True) + 0.5 * vrow / vrow.sum(-1, keepdim=True)
    # float64 throughout, the log-weights through float32 (relative ~4e-8, as in
    # test_kde_weights.py); without the exact keys' mass the distribution moves by more than
    # 2.5e-4 relative (its largest entry change, smallest over seeds 0-199 and the 3 cases).
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


class _CudaFlag(torch.Tensor):
    """A CPU tensor whose ``is_cuda`` is True (what the kernel gate reads of the device)."""

    @property
    def is_cuda(self):
        return True


class _Taken(Exception):
    pass


def test_kde_forward_checks_the_value_head_dim_for_the_kernels(monkeypatch):
    # Kills `use_fused(q, None, config)` in kde_forward: on CUDA the Triton kernels take
    # head dims up to 256 (bfloat16) for q AND v; Dv = 512 must take the torch path. The
    # CUDA gate is emulated: is_cuda, Triton present, no CPU flash kernel (as on a GPU).
    from kernelsketch.attn.common import sortlsh
    from kernelsketch.attn.kde import fused

    monkeypatch.setattr(sortlsh, "triton_available", lambda: True)
    monkeypatch.setattr(kde_method, "flash_applies", lambda q: False)

    def path(name):
        def run(*args, **kwargs):
            raise _Taken(name)
        return run

    monkeypatch.setattr(kde_method, "kde_noncausal", path("torch"))
    monkeypatch.setattr(fused, "kde_noncausal_fused", path("fused"))
    cfg = KDEConfig(block_size=16, sample_size=8, min_seq_len=0)
    for dv, expected in ((512, "torch"), (64, "fused")):
        q = torch.zeros(1, 2, 32, 64, dtype=torch.bfloat16).as_subclass(_CudaFlag)
        k = torch.zeros(1, 2, 32, 64, dtype=torch.bfloat16)
        v = torch.zeros(1, 2, 32, dv, dtype=torch.bfloat16)
        with pytest.raises(_Taken) as taken:
            kde_method.kde_forward(q, k, v, is_causal=False, scale=0.125, config=cfg,
                                   generator=None, need_lse=False)
        assert str(taken.value) == expected, dv


def _sampling_inputs(seed, B=2, H=3, N=48, M=48, D=8):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, H, M, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, M, D, generator=g, dtype=torch.float64)
    return q, k, v


@pytest.mark.filterwarnings("ignore::kernelsketch.attn.common.exact.NoSpeedupWarning")
@pytest.mark.parametrize("is_causal,n", [(False, 48), (True, 128)])
def test_every_draw_comes_from_the_callers_generator(is_causal, n, seed):
    # Kills generator=None (or dropped) wherever the torch path draws: the LSH planes, the
    # AMM distribution's uniform rows and keys, the importance sample, and the generator
    # handed through kde_forward and kde_noncausal (7 mutants of the full run). Drawing from
    # torch's global generator instead would change its state and make two calls with
    # equally seeded generators differ.
    q, k, v = _sampling_inputs(seed, N=n, M=n)  # causal: off-diagonal blocks of 32, 64 keys
    cfg = KDEConfig(block_size=16, sample_size=8, kde_samples=8, min_seq_len=0, sink=2,
                    window=4)

    def run(s):
        return kde_method.kde_forward(q, k, v, is_causal=is_causal, scale=0.35, config=cfg,
                                      generator=torch.Generator().manual_seed(s),
                                      need_lse=True)

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        state = torch.get_rng_state()
        first = run(seed + 1)
        assert torch.equal(torch.get_rng_state(), state), "drew from the global generator"
        again = run(seed + 1)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other = run(seed + 2)  # the draws do depend on the generator: another estimate
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("blocks", [2, 3])
def test_sampling_every_key_is_exact_attention(blocks, seed):
    # Kills `s > M` for `s >= M` (s = M keys then importance-sampled, with repeats), the
    # all-keys log-weights shaped [B, M] for [B, H, M] (B = 2 != H = 3 cannot broadcast) and
    # samples_needed's `num_blocks > 2` (two blocks would drop the pairs between them): with
    # sample_size = M every key outside a query's block enters once with weight 1, so the
    # estimate is exact attention (float64 sums in another order: rounding only).
    M = 16 * blocks
    q, k, v = _sampling_inputs(seed, N=40, M=M)
    cfg = KDEConfig(block_size=16, sample_size=M, kde_samples=8, min_seq_len=0)
    out, lse = kde_module.kde_noncausal(q, k, v, 0.35, cfg, torch.Generator().manual_seed(seed))
    s = q @ k.transpose(-1, -2) * 0.35
    torch.testing.assert_close(out, torch.softmax(s, -1) @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, torch.logsumexp(s, -1), rtol=1e-12, atol=1e-12)


def test_kde_auto_passes_rows_generator_and_exact_keys(seed, monkeypatch):
    # Kills kde_auto's survivors (full attn.kde run at d9ed0e2): the budget predictor without
    # `rows=` or the generator (None / dropped), the AMM distribution inside it without the
    # generator or the exact (sink) keys, and BudgetChoice without the target or rows.
    predict = _record(monkeypatch, kde_method, "predict_sample_size")
    dist = _record(monkeypatch, kde_method, "amm_probabilities")
    q, k, v = _sampling_inputs(seed, B=1, H=2, N=128, M=128)
    cfg = KDEConfig(block_size=16, sample_size=8, kde_samples=8, min_seq_len=0, sink=3,
                    window=0)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        state = torch.get_rng_state()
        choice = kde_method.kde_auto(q, k, v, is_causal=False, scale=0.35, error=0.3,
                                     config=cfg, generator=g, rows=24)
        assert torch.equal(torch.get_rng_state(), state), "drew from the global generator"
    assert choice.target == 0.3 and choice.rows == 24
    # The chosen sample size at every length (the budget schedule off).
    assert choice.config == cfg.replace(sample_size=choice.config.sample_size,
                                        **cfg.unscheduled())
    (_, kwargs, _), = predict
    assert kwargs["rows"] == 24 and kwargs["generator"] is g
    assert dist  # the distribution of the one non-causal level, with the sink keys' mass
    for args, _, _ in dist:
        assert args[6] is g
        assert torch.equal(args[7], k[:, :, :3])
