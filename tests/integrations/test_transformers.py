"""kernelsketch attention inside transformers models (tiny random llama, CPU, float64)."""

import pytest
import torch

import kernelsketch as ks

transformers = pytest.importorskip("transformers", reason="needs the 'hf' extra (transformers)")

import kernelsketch.integrations.transformers as kst
from kernelsketch.attn import ExactConfig, MethodSpec, available_methods, get_method
from kernelsketch.attn import api as attention_api
from kernelsketch.attn.common.exact import exact_forward
from tests.integrations.models import SEQ, tiny_llama, tokens


def logits(model, ids, **kwargs):
    with torch.no_grad():
        return model(ids, **kwargs).logits


def full_budget(method, n):
    """The method's config that covers every key at length n, or skip."""
    if method == "exact":
        return ExactConfig()
    config_cls = get_method(method).config_cls
    if not hasattr(config_cls, "full_budget"):
        pytest.skip(f"{config_cls.__name__} has no full_budget(n) classmethod (no config of "
                    f"{method!r} equals exact softmax attention)")
    return config_cls.full_budget(n)


@pytest.fixture
def calls(monkeypatch):
    """Records (method, queries, keys) of every kernelsketch attention call of the integration."""
    seen = []
    inner = kst.attention

    def spy(q, k, v, *, method, **kwargs):
        seen.append((method, q.shape[2], k.shape[2]))
        return inner(q, k, v, method=method, **kwargs)

    monkeypatch.setattr(kst, "attention", spy)
    return seen


def test_every_method_is_registered_with_transformers():
    names = set(transformers.AttentionInterface._global_mapping)
    masks = set(transformers.masking_utils.AttentionMaskInterface._global_mapping)
    for method in available_methods():
        assert f"kernelsketch-{method}" in names and f"kernelsketch-{method}" in masks


def test_register_all_picks_up_methods_registered_later(monkeypatch):
    spec = MethodSpec(name="later-test", forward=exact_forward, config_cls=ExactConfig,
                      summary="exact under another name")
    monkeypatch.setitem(attention_api._REGISTRY, "later-test", spec)
    monkeypatch.setattr(transformers.AttentionInterface, "_global_mapping",
                        dict(transformers.AttentionInterface._global_mapping))
    assert "kernelsketch-later-test" in kst.register_all()
    assert "kernelsketch-later-test" in transformers.AttentionInterface._global_mapping


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_exact_patch_equals_the_models_own_attention(impl, kv_heads, calls, torch_generator):
    model, ids = tiny_llama(torch_generator, kv_heads, impl), tokens(torch_generator, 2)
    ref = logits(model, ids)
    kst.patch_model(model, "exact")
    out = logits(model, ids)
    assert [c[0] for c in calls] == ["exact"] * 3
    tol = 1e-10 if impl == "sdpa" else 1e-6  # eager takes its softmax in float32
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)


def test_one_line_attn_implementation_equals_sdpa(calls, torch_generator):
    model, ids = tiny_llama(torch_generator), tokens(torch_generator)
    ref = logits(model, ids)
    loaded = transformers.LlamaForCausalLM._from_config(
        model.config, attn_implementation="kernelsketch-exact").double().eval()
    loaded.load_state_dict(model.state_dict())
    assert loaded.config._attn_implementation == "kernelsketch-exact"
    torch.testing.assert_close(logits(loaded, ids), ref, rtol=1e-10, atol=1e-10)
    assert len(calls) == 3


@pytest.mark.parametrize("method", available_methods())
def test_full_budget_patch_equals_exact_logits(method, calls, torch_generator):
    config = full_budget(method, SEQ)
    model, ids = tiny_llama(torch_generator), tokens(torch_generator, 2)
    ref = logits(model, ids)
    kst.patch_model(model, method, config, layers=2)
    out = logits(model, ids)
    assert calls == [(method, SEQ, SEQ)] * 2  # the last two layers, prefill through the method
    torch.testing.assert_close(out, ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("method", available_methods())
def test_full_budget_one_line_loading_equals_exact(method, torch_generator):
    config = full_budget(method, SEQ)
    model, ids = tiny_llama(torch_generator), tokens(torch_generator)
    ref = logits(model, ids)
    name = kst.register(method, config, name=f"kernelsketch-{method}-full-test")
    loaded = transformers.LlamaForCausalLM._from_config(model.config, attn_implementation=name)
    loaded = loaded.double().eval()
    loaded.load_state_dict(model.state_dict())
    torch.testing.assert_close(logits(loaded, ids), ref, rtol=1e-8, atol=1e-8)


def test_budget_starved_sketch_changes_logits_and_is_deterministic(torch_generator):
    hyper = pytest.importorskip("kernelsketch.attn.hyper", reason="HyperAttention not merged")
    small = hyper.HyperConfig(block_size=4, sample_size=2, min_seq_len=4, lsh_bits=2, sink=0,
                             window=0)
    model, ids = tiny_llama(torch_generator), tokens(torch_generator, 1, 64)
    ref = logits(model, ids)
    kst.patch_model(model, "hyper", small, layers=[0, 1, 2], seed=3)
    first, again = logits(model, ids), logits(model, ids)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert (first - ref).abs().max() > 1e-6
    kst.patch_model(model, "hyper", small, seed=11)
    assert (logits(model, ids) - first).abs().max() > 0


@pytest.mark.parametrize("decode", ["exact", "method"])
@pytest.mark.parametrize("method", available_methods())
def test_generation_with_kv_cache_after_patching(method, decode, calls, torch_generator):
    new = 6
    config = full_budget(method, SEQ + new)
    model, ids = tiny_llama(torch_generator), tokens(torch_generator, 1)
    kwargs = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "use_cache": True,
              "return_dict_in_generate": True, "output_scores": True, "pad_token_id": 0,
              "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        ref = model.generate(ids, **kwargs)
        kst.patch_model(model, method, config, layers=2, decode=decode)
        out = model.generate(ids, **kwargs)
    assert torch.equal(out.sequences, ref.sequences)
    torch.testing.assert_close(torch.stack(out.scores), torch.stack(ref.scores), rtol=1e-8,
                               atol=1e-8)
    prefill = [c for c in calls if c[1] == c[2]]
    steps = [c for c in calls if c[1] < c[2]]
    assert prefill == [(method, SEQ, SEQ)] * 2
    assert len(steps) == 2 * (new - 1) and all(c[1] == 1 for c in steps)
    assert {c[0] for c in steps} == {"exact" if decode == "exact" else method}


def left_padded_batch(generator):
    ids = tokens(generator, 2)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    return ids, mask


def test_exact_patch_honours_padding_masks(torch_generator):
    model = tiny_llama(torch_generator)
    ids, mask = left_padded_batch(torch_generator)
    ref = logits(model, ids, attention_mask=mask)
    kst.patch_model(model, "exact")
    out = logits(model, ids, attention_mask=mask)
    keep = mask.bool()
    torch.testing.assert_close(out[keep], ref[keep], rtol=1e-10, atol=1e-10)
    # The padded row, unpadded and alone, gives the same logits (the mask is honoured).
    # Tolerance 1e-6: the rotary tables are computed in float32 even for a float64 model,
    # so shifted positions round differently (differences up to ~1.5e-8 seen).
    alone = logits(model, ids[1:, 5:])
    torch.testing.assert_close(out[1, 5:], alone[0], rtol=1e-6, atol=1e-6)


def padded_batch(generator, side):
    """Sequences of SEQ and SEQ - 5 tokens, the second padded on the ``side``; position ids
    that put each sequence's tokens at 0, 1, ... as when it is alone."""
    ids = tokens(generator, 2)
    mask = torch.ones_like(ids)
    if side == "left":
        mask[1, :5] = 0
    else:
        mask[1, -5:] = 0
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("method", available_methods())
def test_padded_batch_at_full_budget_equals_exact(method, side, calls, torch_generator):
    config = full_budget(method, SEQ)
    model = tiny_llama(torch_generator)
    ids, mask, positions = padded_batch(torch_generator, side)
    ref = logits(model, ids, attention_mask=mask, position_ids=positions)
    kst.patch_model(model, method, config, layers=2)
    out = logits(model, ids, attention_mask=mask, position_ids=positions)
    keep = mask.bool()
    torch.testing.assert_close(out[keep], ref[keep], rtol=1e-8, atol=1e-8)
    if method != "exact":  # exact applies the mask itself; a sketch runs each sequence alone
        assert calls == [(method, SEQ, SEQ), (method, SEQ - 5, SEQ - 5)] * 2


SMALL = {  # configs under which each method is far from exact attention at SEQ tokens
    "hyper": lambda: ks.HyperConfig(block_size=4, sample_size=2, min_seq_len=4, lsh_bits=2,
                                    sink=0, window=0),
    "kde": lambda: ks.KDEConfig(block_size=4, sample_size=2, kde_samples=4, min_seq_len=4,
                                lsh_bits=2, sink=0, window=0),
    "polynomial": lambda: None,
    "polysketch": lambda: ks.PolySketchConfig(sketch_size=8, block_size=4),
    "lev": lambda: ks.LevConfig(budget=4),
}


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("method", sorted(SMALL))
def test_a_padded_sequence_gives_what_it_gives_alone(method, side, torch_generator):
    model = tiny_llama(torch_generator)
    ids, mask, positions = padded_batch(torch_generator, side)
    real = mask[1].bool()
    exact_alone = logits(model, ids[1:, real])
    kst.patch_model(model, method, SMALL[method](), seed=3)
    out = logits(model, ids, attention_mask=mask, position_ids=positions)
    alone = logits(model, ids[1:, real])
    assert (alone - exact_alone).abs().max() > 1e-6  # the method is not exact here
    torch.testing.assert_close(out[1, real], alone[0], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(out[0], logits(model, ids[:1])[0], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("method", available_methods())
def test_generation_of_a_left_padded_batch(method, torch_generator):
    new = 4
    config = full_budget(method, SEQ + new)
    model = tiny_llama(torch_generator)
    ids, mask, _ = padded_batch(torch_generator, "left")
    kwargs = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "use_cache": True,
              "return_dict_in_generate": True, "output_scores": True, "pad_token_id": 0,
              "attention_mask": mask}
    with torch.no_grad():
        ref = model.generate(ids, **kwargs)
        kst.patch_model(model, method, config, layers=2, decode="method")
        out = model.generate(ids, **kwargs)
    assert torch.equal(out.sequences, ref.sequences)
    torch.testing.assert_close(torch.stack(out.scores), torch.stack(ref.scores), rtol=1e-8,
                               atol=1e-8)


@pytest.mark.parametrize("method", [m for m in available_methods() if m != "exact"])
def test_sketched_method_rejects_a_mask_that_is_not_padding(method, torch_generator):
    layer = kst.attention_layers(tiny_llama(torch_generator))[0]
    q = torch.randn(1, 4, 6, 8, dtype=torch.float64, generator=torch_generator)
    k = torch.randn(1, 2, 6, 8, dtype=torch.float64, generator=torch_generator)
    band = torch.ones(6, 6, dtype=torch.bool).tril() & ~torch.ones(6, 6, dtype=torch.bool).tril(-2)
    fn = transformers.AttentionInterface._global_mapping[f"kernelsketch-{method}"]
    with pytest.raises(ValueError, match=rf"method '{method}' cannot honour a custom attention"):
        fn(layer, q, k, k, band[None, None], scaling=0.3)


@pytest.mark.parametrize("method", available_methods())
def test_all_ones_padding_mask_is_the_plain_causal_mask(method, calls, torch_generator):
    config = full_budget(method, SEQ)
    model, ids = tiny_llama(torch_generator), tokens(torch_generator, 2)
    ref = logits(model, ids)
    kst.patch_model(model, method, config, layers=1)
    out = logits(model, ids, attention_mask=torch.ones_like(ids))
    assert calls == [(method, SEQ, SEQ)]
    torch.testing.assert_close(out, ref, rtol=1e-8, atol=1e-8)


def test_layers_selection_and_unpatch(calls, torch_generator):
    model, ids = tiny_llama(torch_generator, layers=4), tokens(torch_generator)
    ref = logits(model, ids)
    assert sorted(kst.patch_model(model, "exact", layers=2) and kst.patched_layers(model)) == [2, 3]
    kst.unpatch(model)
    kst.patch_model(model, "exact", layers=[0, -1])
    assert sorted(kst.patched_layers(model)) == [0, 3]
    kst.patch_model(model, "exact", layers=0)
    assert sorted(kst.patched_layers(model)) == [0, 3]
    kst.unpatch(model)
    assert kst.patched_layers(model) == {}
    calls.clear()
    out = logits(model, ids)
    assert calls == [] and model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_patch_keeps_the_model_config_and_state_dict(torch_generator):
    model = tiny_llama(torch_generator)
    keys = set(model.state_dict())
    kst.patch_model(model, "exact", layers=1)
    assert set(model.state_dict()) == keys
    assert model.config._attn_implementation == "sdpa"
    layers = kst.attention_layers(model)
    assert layers[2].config._attn_implementation == "kernelsketch-exact"
    assert layers[0].config is model.config


def test_patched_model_trains_with_zero_dropout(torch_generator):
    model = tiny_llama(torch_generator).train()
    kst.patch_model(model, "exact")
    ids = tokens(torch_generator)
    model(ids, labels=ids).loss.backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


# --- errors -----------------------------------------------------------------


def test_dropout_in_training_is_an_error(torch_generator):
    model = tiny_llama(torch_generator, dropout=0.1).train()
    kst.patch_model(model, "exact")
    with pytest.raises(ValueError, match=r"attention dropout 0 .* got dropout=0.1"):
        model(tokens(torch_generator))


def test_output_attentions_is_an_error(torch_generator):
    model = tiny_llama(torch_generator)
    kst.patch_model(model, "exact")
    with pytest.raises(ValueError, match="output_attentions=True needs attn_implementation='eager'"):
        logits(model, tokens(torch_generator), output_attentions=True)


def test_additive_bias_mask_is_an_error(torch_generator):
    layer = kst.attention_layers(tiny_llama(torch_generator))[0]
    q = torch.randn(1, 4, 5, 8, dtype=torch.float64, generator=torch_generator)
    k = torch.randn(1, 2, 5, 8, dtype=torch.float64, generator=torch_generator)
    bias = torch.randn(1, 1, 5, 5, dtype=torch.float64, generator=torch_generator)
    fn = transformers.AttentionInterface._global_mapping["kernelsketch-exact"]
    with pytest.raises(ValueError, match="attention_mask holds an additive bias"):
        fn(layer, q, k, k, bias, scaling=0.3)


def test_mask_of_wrong_shape_is_an_error(torch_generator):
    layer = kst.attention_layers(tiny_llama(torch_generator))[0]
    q = torch.randn(1, 4, 5, 8, dtype=torch.float64, generator=torch_generator)
    k = torch.randn(1, 2, 5, 8, dtype=torch.float64, generator=torch_generator)
    fn = transformers.AttentionInterface._global_mapping["kernelsketch-exact"]
    with pytest.raises(ValueError, match=r"attention_mask must be 2D \[batch, kv_len\]"):
        fn(layer, q, k, k, torch.ones(1, 5, 5, dtype=torch.bool), scaling=0.3)


def test_unknown_method_is_an_error(torch_generator):
    with pytest.raises(ValueError, match="method must be one of"):
        kst.patch_model(tiny_llama(torch_generator), "no-such-method")


def test_wrong_config_type_is_an_error(torch_generator):
    other = next((m for m in available_methods() if m != "exact"), None)
    if other is None:
        pytest.skip("needs a second registered method")
    with pytest.raises(TypeError, match=r"config for method .* must be a"):
        kst.patch_model(tiny_llama(torch_generator), other, ExactConfig())


def test_negative_seed_is_an_error(torch_generator):
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        kst.patch_model(tiny_llama(torch_generator), "exact", seed=-1)


def test_seed_beyond_a_generator_seed_is_an_error(torch_generator):
    with pytest.raises(ValueError, match="seed must be <= 9223372036854775807"):
        kst.patch_model(tiny_llama(torch_generator), "exact", seed=2**64)


def test_bad_decode_is_an_error(torch_generator):
    with pytest.raises(ValueError, match=r"decode must be one of \('exact', 'method'\)"):
        kst.patch_model(tiny_llama(torch_generator), "exact", decode="sketch")


def test_too_many_layers_is_an_error(torch_generator):
    with pytest.raises(ValueError, match="layers must be <= 3, got 4"):
        kst.patch_model(tiny_llama(torch_generator), "exact", layers=4)


def test_layer_index_out_of_range_is_an_error(torch_generator):
    with pytest.raises(ValueError, match=r"layers must hold layer indices in \[-3, 3\), got \[3\]"):
        kst.patch_model(tiny_llama(torch_generator), "exact", layers=[3])


def test_layers_of_wrong_type_is_an_error(torch_generator):
    with pytest.raises(TypeError, match="layers must be None .* got float"):
        kst.patch_model(tiny_llama(torch_generator), "exact", layers=1.5)


def test_model_without_attention_layers_is_an_error():
    with pytest.raises(ValueError, match="model must contain transformers attention modules"):
        kst.patch_model(torch.nn.Linear(2, 2), "exact")


def test_non_module_model_is_an_error():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        kst.patch_model("llama", "exact")
