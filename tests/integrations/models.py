"""A tiny random llama and token ids for the integration and evaluation tests (CPU, float64),
every draw from the test's generator."""

import torch
import transformers

VOCAB, SEQ = 61, 24


def tiny_llama(generator, kv_heads=2, impl="sdpa", layers=3, dropout=0.0):
    """A random llama (GQA 4 query heads over ``kv_heads``), float64, eval mode.

    Its matrices are redrawn from ``generator`` (N(0, 0.02²), the config's
    initializer range; norms stay 1), so the model does not depend on torch's
    global generator.
    """
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128,
        attention_dropout=dropout, attn_implementation=impl,
    )
    model = transformers.LlamaForCausalLM(config).double().eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(0.02 * torch.randn(param.shape, generator=generator,
                                               dtype=param.dtype))
    return model


def tokens(generator, batch=1, n=SEQ):
    """Random ids avoiding the llama config's special tokens 0, 1, 2 (pad, bos, eos)."""
    return torch.randint(3, VOCAB, (batch, n), generator=generator)
