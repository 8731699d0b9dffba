"""Integrations with other libraries.

* :mod:`kernelsketch.integrations.transformers` — registers every method with
  Hugging Face transformers' attention interface ("kernelsketch-<method>") and
  patches chosen layers of a loaded model (needs the ``hf`` extra).

It is not imported here, so ``import kernelsketch`` never needs transformers.
The perplexity evaluation of a real pretrained LM with patched layers is
:mod:`kernelsketch.eval.lm` (``kernelsketch eval-lm``).
"""
