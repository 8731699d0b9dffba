"""Integrations with other libraries.

* :mod:`kernelsketch.integrations.transformers` — registers every method with
  Hugging Face transformers' attention interface ("kernelsketch-<method>") and
  patches chosen layers of a loaded model (needs the ``hf`` extra).
* :mod:`kernelsketch.integrations.lm_eval` — perplexity of a real pretrained LM
  (SmolLM2-135M, offline GGUF) on real long text with patched layers.

Neither is imported here, so ``import kernelsketch`` never needs transformers.
"""
