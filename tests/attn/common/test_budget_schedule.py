"""The LSH methods' budget schedule (``long_seq_len``, ``long_sample_size``; causal.py's
:func:`long_causal_config`): causal problems over more than ``long_seq_len`` keys sample
``long_sample_size`` keys per block, every other problem runs its config unchanged.

Identity is checked as equal outputs for the same generator state: the schedule only
replaces ``sample_size``, so a call it leaves alone is bit-identical to the call with the
schedule off (``long_sample_size=None``), and a call it applies to is bit-identical to the
call with ``sample_size=long_sample_size`` and the schedule off. One head of dimension 16
keeps the 8192-token calls cheap; the default ``long_seq_len`` (8192) is the point tested.
"""

import pytest
import torch

import kernelsketch as ks
from kernelsketch.attn.common.causal import long_causal_config
from kernelsketch.attn.hyper import HyperConfig
from kernelsketch.attn.kde import KDEConfig

CONFIGS = {"hyper": HyperConfig, "kde": KDEConfig}


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
    want = _run(method, q, k, v, cls(long_sample_size=None), seed + 1)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", ["hyper", "kde"])
def test_above_8192_keys_causal_calls_sample_long_sample_size(method, seed):
    cls = CONFIGS[method]
    q, k, v = _qkv(8193, seed, torch.float32)
    got = _run(method, q, k, v, cls(), seed + 1)
    want = _run(method, q, k, v, cls(sample_size=120, long_sample_size=None), seed + 1)
    unscheduled = _run(method, q, k, v, cls(long_sample_size=None), seed + 1)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not torch.equal(got[0], unscheduled[0])  # the schedule changed the sample


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", ["hyper", "kde"])
def test_non_causal_calls_keep_sample_size(method, seed):
    cls = CONFIGS[method]
    q, k, v = _qkv(8193, seed, torch.float32)
    got = _run(method, q, k, v, cls(), seed + 1, is_causal=False)
    want = _run(method, q, k, v, cls(long_sample_size=None), seed + 1, is_causal=False)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("method", ["hyper", "kde"])
def test_long_causal_config(method):
    cls = CONFIGS[method]
    cfg = cls(sample_size=64, long_seq_len=100, long_sample_size=8)
    assert long_causal_config(cfg, is_causal=True, num_keys=100) is cfg
    assert long_causal_config(cfg, is_causal=False, num_keys=101) is cfg
    assert long_causal_config(cfg, is_causal=True, num_keys=101) == cls(
        sample_size=8, long_seq_len=100, long_sample_size=None)
    off = cls(long_sample_size=None)
    assert long_causal_config(off, is_causal=True, num_keys=10**6) is off
    # The constructors whose point is their own sample size switch the schedule off.
    assert cls.full_budget(64).long_sample_size is None
    if method == "hyper":
        assert cls.paper().long_sample_size is None


@pytest.mark.parametrize("method", ["hyper", "kde"])
@pytest.mark.parametrize("field, value, error", [
    ("long_sample_size", -1, ValueError), ("long_sample_size", 1.5, TypeError),
    ("long_seq_len", -1, ValueError), ("long_seq_len", True, TypeError)])
def test_schedule_fields_are_checked(method, field, value, error):
    with pytest.raises(error, match=field):
        CONFIGS[method](**{field: value})


@pytest.mark.parametrize("method", ["hyper", "kde"])
def test_automatic_budget_is_not_rescheduled(method, seed):
    # config="auto" picks sample_size for the call: the schedule must not replace it.
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 1, 512, 16, generator=g) for _ in range(3))
    cfg = CONFIGS[method](min_seq_len=64)
    choice = ks.attn.choose_budget(q, k, v, method=method, is_causal=True, config=cfg,
                                   generator=g, rows=32)
    assert choice.config.long_sample_size is None
