import inspect

import pytest
import torch

import kernelsketch as ks
from kernelsketch.attn import SketchedAttention, get_method

from .reference import naive_attention, random_qkv


def good():
    return random_qkv(1, 4, 2, 8, 8, 4)


BAD_INPUTS = [
    # (description, mutate(q, k, v) -> (q, k, v), error type, text in the message)
    ("q not a tensor", lambda q, k, v: (q.numpy(), k, v), TypeError, "q must be a torch.Tensor"),
    ("q rank 3", lambda q, k, v: (q[0], k, v), ValueError, "q must have 4 dimensions"),
    ("k rank 5", lambda q, k, v: (q, k[None], v), ValueError, "k must have 4 dimensions"),
    ("int dtype", lambda q, k, v: (q.long(), k, v), TypeError, "q must have dtype"),
    ("mixed dtypes", lambda q, k, v: (q, k.float(), v), TypeError, "k must have the same dtype"),
    ("batch mismatch", lambda q, k, v: (q, k.repeat(2, 1, 1, 1), v), ValueError, "batch size"),
    ("heads not multiple", lambda q, k, v: (q[:, :3], k, v), ValueError, "multiple"),
    ("v heads", lambda q, k, v: (q, k, v[:, :1]), ValueError, "v must have 2 heads"),
    ("v keys", lambda q, k, v: (q, k, v[:, :, :5]), ValueError, "v must have 8 keys"),
    ("head dim", lambda q, k, v: (q, k[..., :3], v), ValueError, "k must have head dim 4"),
    ("empty", lambda q, k, v: (q[:, :, :0], k, v), ValueError, "q must be non-empty"),
    ("nan", lambda q, k, v: (q, k.index_fill(2, torch.tensor([1]), float("nan")), v), ValueError,
     "k must be finite"),
    ("inf", lambda q, k, v: (q, k, v.index_fill(3, torch.tensor([0]), float("inf"))), ValueError,
     "v must be finite"),
]


@pytest.mark.parametrize("desc,mutate,err,text", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_are_rejected_with_clear_errors(desc, mutate, err, text):
    q, k, v = mutate(*good())
    with pytest.raises(err, match=text):
        ks.attention(q, k, v)


def test_bad_arguments():
    q, k, v = good()
    with pytest.raises(ValueError, match="method must be one of"):
        ks.attention(q, k, v, method="nope")
    with pytest.raises(ValueError, match="scale must be > 0"):
        ks.attention(q, k, v, scale=-1.0)
    with pytest.raises(TypeError, match="is_causal must be a bool"):
        ks.attention(q, k, v, is_causal=1)
    with pytest.raises(TypeError, match="config for method 'exact' must be a ExactConfig"):
        ks.attention(q, k, v, config=object())
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        ks.attention(q, k, v, generator=3)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        ks.ExactConfig(chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size must be an int"):
        ks.ExactConfig(chunk_size=2.5)


def test_device_mismatch_is_rejected():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to build a cross-device input")
    q, k, v = good()
    with pytest.raises(ValueError, match="same device"):
        ks.attention(q.cuda(), k, v)


def test_registry_lists_exact_first_and_attention_is_a_plain_function():
    assert ks.available_methods()[0] == "exact"
    assert get_method("exact").config_cls is ks.ExactConfig
    q, k, v = good()
    torch.testing.assert_close(ks.attention(q, k, v), naive_attention(q, k, v))
    import kernelsketch.attn.common.metrics as metrics_by_path
    from kernelsketch.attn import metrics

    assert inspect.isfunction(ks.attention) and ks.attn.metrics is metrics is metrics_by_path
    assert [get_method(name).name for name in ks.available_methods()] == ks.available_methods()


def test_module_wrapper_is_deterministic_and_keeps_seed_in_state_dict():
    layer = SketchedAttention("exact", seed=3, is_causal=True)
    q, k, v = good()
    torch.testing.assert_close(layer(q, k, v), naive_attention(q, k, v, is_causal=True))
    assert int(layer.state_dict()["seed"]) == 3
    other = SketchedAttention("exact", seed=0, is_causal=True)
    other.load_state_dict(layer.state_dict())
    assert int(other.seed) == 3


@pytest.mark.parametrize("kwargs, error, match", [
    ({"seed": 2**64}, ValueError, r"seed must be <= 9223372036854775807, got 18446744073709551616"),
    ({"seed": -1}, ValueError, "seed must be >= 0"),
    ({"seed": 1.5}, TypeError, "seed must be an int"),
    ({"scale": 0.0}, ValueError, "scale must be > 0"),
    ({"scale": float("inf")}, ValueError, "scale must be finite"),
    ({"is_causal": 1}, TypeError, "is_causal must be a bool"),
])
def test_module_wrapper_checks_its_arguments_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        SketchedAttention("hyper", **kwargs)


def test_module_wrapper_takes_the_largest_int64_seed():
    layer = SketchedAttention("exact", seed=2**63 - 1)
    assert int(layer.seed) == 2**63 - 1
