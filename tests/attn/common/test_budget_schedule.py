"""The LSH methods' budget schedule (``long_seq_len``, ``long_sample_size``,
``long_min_seq_len``; ``SortLSHConfig.scheduled``): causal problems over more than
``long_seq_len`` keys sample ``long_sample_size`` keys per block and compute exactly only
blocks of at most ``long_min_seq_len`` keys; every other problem runs its config unchanged.

Identity is checked as equal outputs for the same generator state: the schedule only
replaces ``sample_size`` and ``min_seq_len``, so a call it leaves alone is bit-identical to
the call with the schedule off (both ``long_`` fields None), and a call it applies to is
bit-identical to the call with the ``long_`` values and the schedule off. One head of dimension 16
keeps the 8192-token calls cheap; the default ``long_seq_len`` (8192) is the point tested.
"""

import pytest
import torch

import kernelsketch as ks
from kernelsketch.attn.hyper import HyperConfig
from kernelsketch.attn.kde import KDEConfig

CONFIGS = {"hyper": HyperConfig, "kde": KDEConfig}
# The long budget of each method's defaults, as plain fields.
LONG = {"hyper": {"sample_size": 120, "min_seq_len": 512},
        "kde": {"sample_size": 120, "min_seq_len": 512, "kde_samples": 128}}


def _qkv(n, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, 1, n, 16, generator=g, dtype=dtype) for _ in range(3))


def _run(method, q, k, v, config, seed, is_causal=True):
    return ks.attention(q, k, v, method=method, config=config, is_causal=is_causal,
                        return_lse=True, generator=torch.Generator().manual_seed(seed))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", ["hyper", "kde"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_defaults_up_to_8192_keys_are_the_unscheduled_estimator(method, dtype, seed):
    # The 8k perplexity measurement (n = 8192, default config) stays valid: at 8192 keys
    # the default config gives the outputs of the config without the schedule.
    cls = CONFIGS[method]
    q, k, v = _qkv(8192, seed, dtype)
    got = _run(method, q, k, v, cls(), seed + 1)
    want = _run(method, q, k, v, cls(**cls.unscheduled()), seed + 1)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method, field", [(m, f) for m in LONG for f in LONG[m]])
def test_above_8192_keys_causal_calls_run_the_long_budget(method, field, seed):
    cls = CONFIGS[method]
    assert cls.SCHEDULED == tuple(LONG[method])
    q, k, v = _qkv(8193, seed, torch.float32)
    got = _run(method, q, k, v, cls(), seed + 1)
    want = _run(method, q, k, v, cls(**LONG[method], **cls.unscheduled()), seed + 1)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # each long_ field changes the call on its own
    partial = _run(method, q, k, v, cls(**{"long_" + field: None}), seed + 1)
    assert not torch.equal(got[0], partial[0])


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", ["hyper", "kde"])
def test_non_causal_calls_keep_sample_size(method, seed):
    cls = CONFIGS[method]
    q, k, v = _qkv(8193, seed, torch.float32)
    got = _run(method, q, k, v, cls(), seed + 1, is_causal=False)
    want = _run(method, q, k, v, cls(**cls.unscheduled()), seed + 1, is_causal=False)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("method", ["hyper", "kde"])
def test_scheduled(method):
    cls = CONFIGS[method]
    cfg = cls(sample_size=64, min_seq_len=32, long_seq_len=100, long_sample_size=8,
              long_min_seq_len=16)
    assert cfg.scheduled(is_causal=True, num_keys=100) is cfg
    assert cfg.scheduled(is_causal=False, num_keys=101) is cfg
    off = cls.unscheduled()
    kde = {"kde_samples": 128} if method == "kde" else {}
    assert cfg.scheduled(is_causal=True, num_keys=101) == cls(
        sample_size=8, min_seq_len=16, long_seq_len=100, **kde, **off)
    assert cfg.replace(long_min_seq_len=None).scheduled(is_causal=True, num_keys=101) == cls(
        sample_size=8, min_seq_len=32, long_seq_len=100, **kde, **off)
    none = cls(**off)
    assert none.scheduled(is_causal=True, num_keys=10**6) is none
    # The constructors whose point is their own budget switch the schedule off.
    assert cls.full_budget(64) == cls.full_budget(64).scheduled(is_causal=True, num_keys=10**6)
    if method == "hyper":
        assert cls.paper().scheduled(is_causal=True, num_keys=10**6) == cls.paper()


@pytest.mark.parametrize("method", ["hyper", "kde"])
@pytest.mark.parametrize("field, value, error", [
    ("long_sample_size", -1, ValueError), ("long_sample_size", 1.5, TypeError),
    ("long_seq_len", -1, ValueError), ("long_seq_len", True, TypeError),
    ("long_min_seq_len", -2, ValueError), ("long_min_seq_len", "512", TypeError),
    ("sketch_dtype", "float16", ValueError), ("sketch_dtype", None, ValueError)])
def test_schedule_fields_are_checked(method, field, value, error):
    with pytest.raises(error, match=field):
        CONFIGS[method](**{field: value})


@pytest.mark.parametrize("value, error", [(0, ValueError), (2.0, TypeError)])
def test_long_kde_samples_is_checked(value, error):
    with pytest.raises(error, match="long_kde_samples"):
        KDEConfig(long_kde_samples=value)


@pytest.mark.parametrize("method", ["hyper", "kde"])
def test_automatic_budget_is_not_rescheduled(method, seed):
    # config="auto" picks sample_size for the call: the schedule must not replace it.
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 1, 512, 16, generator=g) for _ in range(3))
    cfg = CONFIGS[method](min_seq_len=64)
    choice = ks.attn.choose_budget(q, k, v, method=method, is_causal=True, config=cfg,
                                   generator=g, rows=32)
    assert choice.config == choice.config.replace(**choice.config.unscheduled())
