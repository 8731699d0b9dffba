"""Hugging Face ``transformers`` integration: kernelsketch attention inside pretrained models.

Importing this module registers every kernelsketch method with transformers'
attention interface as ``"kernelsketch-<method>"`` (e.g. ``"kernelsketch-hyper"``),
so one line switches a whole model::

    import kernelsketch.integrations.transformers  # registers the names
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="kernelsketch-hyper")

:func:`patch_model` switches chosen layers only (HyperAttention, arXiv
2310.05869 §5, patches the last layers of a pretrained LM and keeps the first
ones exact), with a non-default config, and :func:`unpatch` restores them.

How a call is computed (the same for both routes):

* prefill (query length == key length, no mask or a plain causal mask): the
  method, with ``is_causal`` from the layer;
* decoding with a KV cache (fewer queries than keys): exact attention by
  default (the cost per token is linear anyway), or the method's own
  bottom-right-causal path with ``decode="method"``;
* padding masks (a batch of sequences of different lengths): each sequence
  runs through the method alone on its own tokens, unpadded, with the
  plain causal (or full) pattern over them, so a padded sequence gives what
  it gives alone; the outputs of padding queries are 0;
* other custom masks: honoured by ``exact``; any other method raises
  ``ValueError`` (a sketch cannot drop arbitrary key/query pairs);
* attention dropout must be 0 (``model.eval()``, or ``attention_dropout=0``).

GQA models pass their ``Hkv`` key/value heads through unchanged
(kernelsketch's attention handles grouped queries without copying keys).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .._checks import check_choice, check_int
from ..attn import MethodConfig, attention, available_methods, get_method, resolve_config

__all__ = [
    "PREFIX",
    "LayerPatch",
    "attention_layers",
    "implementation_name",
    "patch_model",
    "patched_layers",
    "register",
    "register_all",
    "unpatch",
]

PREFIX = "kernelsketch-"

# kwargs of transformers' attention functions that change the math and that a
# sketched method cannot apply.
_UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks", "position_bias", "head_mask")


@dataclass(frozen=True)
class LayerPatch:
    """How one attention layer computes attention.

    Parameters
    ----------
    method : a name from :func:`kernelsketch.attn.available_methods`.
    config : the method's config dataclass (its default when None).
    seed : layer ``l`` draws its sketches from a generator seeded with
        ``seed + l`` at every forward, so the model is deterministic.
    decode : "exact" (default) or "method": what computes the steps with fewer
        queries than keys (KV-cache decoding, chunked prefill).
    """

    method: str
    config: MethodConfig | None = None
    seed: int = 0
    decode: str = "exact"

    def __post_init__(self) -> None:
        spec = get_method(self.method)
        object.__setattr__(self, "config", resolve_config(spec, self.config))
        check_int("seed", self.seed, min=0, max=2**63 - 1)  # seed + layer index seeds a Generator
        check_choice("decode", self.decode, ("exact", "method"))


def implementation_name(method: str) -> str:
    """The ``attn_implementation`` name of a kernelsketch method: ``"kernelsketch-<method>"``."""
    get_method(method)
    return PREFIX + method


# ---------------------------------------------------------------------------
# Masks


def _keep_mask(mask: torch.Tensor, batch: int, n: int, m: int) -> torch.Tensor:
    """transformers' mask as a boolean keep-mask broadcastable to [B, H, n, m].

    Accepts the 4D boolean masks of the sdpa mask interface, the 4D additive
    float masks of the eager one (0 keeps, very negative drops) and 2D
    padding masks [B, m] (1 keeps).
    """
    if mask.dim() == 2:
        if mask.shape != (batch, m):
            raise ValueError(
                f"attention_mask must be [batch, kv_len] = [{batch}, {m}] when 2D, "
                f"got {list(mask.shape)}"
            )
        return mask.bool()[:, None, None, :]
    if mask.dim() != 4 or mask.shape[-2:] != (n, m):
        raise ValueError(
            f"attention_mask must be 2D [batch, kv_len] or 4D [batch, heads, {n}, {m}], "
            f"got {list(mask.shape)}"
        )
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        return mask != 0
    drop = mask <= torch.finfo(mask.dtype).min / 2
    if not torch.all((mask == 0) | drop):
        raise ValueError(
            "attention_mask holds an additive bias (values other than 0 and -inf); "
            "kernelsketch attention only applies keep/drop masks"
        )
    return ~drop


def _is_causal_pattern(keep: torch.Tensor, n: int, m: int) -> bool:
    """Whether ``keep`` is the plain causal mask, aligned bottom-right, for every batch row."""
    causal = torch.ones(n, m, dtype=torch.bool, device=keep.device).tril(m - n)
    return bool(torch.all(keep == causal))


def _unpadded(keep: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, bool]] | None:
    """Each batch row's (query indices, key indices, is_causal) when ``keep`` is padding.

    ``keep`` [B, 1 or H, N, M] is a padding mask when, in every row, the
    tokens (the keys some query keeps, and the queries at their positions,
    query i at key position i + M - N) see each other, and nothing else,
    with the plain causal pattern (bottom-right) or all of them, the same for
    every head. None otherwise. Queries at padding positions are left out,
    whatever they keep (their output is 0).
    """
    if keep.shape[1] > 1 and not bool(torch.all(keep == keep[:, :1])):
        return None
    N, M = keep.shape[-2:]
    rows = []
    for row in keep[:, 0]:
        k_valid = row.any(0)
        q_valid = row.any(1)
        if M >= N:
            q_valid = q_valid & k_valid[M - N:]
        q_idx, k_idx = q_valid.nonzero().flatten(), k_valid.nonzero().flatten()
        if bool(row[q_idx][:, ~k_valid].any()):
            return None
        sub = row[q_idx][:, k_idx]
        n, m = sub.shape
        if bool(sub.all()):
            rows.append((q_idx, k_idx, False))
        elif _is_causal_pattern(sub, n, m):
            rows.append((q_idx, k_idx, True))
        else:
            return None
    return rows


# ---------------------------------------------------------------------------
# The attention function transformers calls


def _exact_with_mask(query, key, value, keep, scaling):
    """Exact attention honouring an arbitrary keep-mask (SDPA; fully masked rows give 0)."""
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=keep, scale=scaling, enable_gqa=query.shape[1] != key.shape[1]
    )
    # Rows that keep no key (left padding) are NaN in some SDPA backends; they
    # carry no information and transformers ignores them: return 0 there.
    empty = ~keep.any(dim=-1, keepdim=True)
    return out.masked_fill(empty, 0.0) if bool(empty.any()) else out


def _layer_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    patch: LayerPatch,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention of one transformers layer; returns ([B, N, Hq, Dv], None) like sdpa."""
    if dropout:
        raise ValueError(
            f"kernelsketch attention needs attention dropout 0 (call model.eval() or set "
            f"attention_dropout=0), got dropout={dropout}"
        )
    for name in _UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise ValueError(
                f"kernelsketch attention does not support {name!r}; use attn_implementation "
                f"'eager' or 'sdpa' for this model"
            )
    if kwargs.get("output_attentions"):
        raise ValueError(
            "kernelsketch attention does not materialise attention weights; "
            "output_attentions=True needs attn_implementation='eager'"
        )
    if is_causal is None:
        is_causal = bool(getattr(module, "is_causal", True))
    B, N, M = query.shape[0], query.shape[2], key.shape[2]

    keep = None
    if attention_mask is not None:
        keep = _keep_mask(attention_mask, B, N, M)
        # A mask is the whole specification of who sees whom (as in sdpa).
        if _is_causal_pattern(keep, N, M):
            keep, is_causal = None, True
        elif bool(keep.all()):
            keep, is_causal = None, False
    elif is_causal and 1 < N < M:
        # transformers' sdpa convention: without a mask, the extra keys are
        # unfilled static-cache slots after the N real ones.
        key, value = key[:, :, :N], value[:, :, :N]
        M = N

    decoding = N != M
    method = "exact" if decoding and patch.decode == "exact" else patch.method
    config = patch.config if method == patch.method else None
    seed = patch.seed + int(getattr(module, "layer_idx", 0) or 0)

    def run(q, k, v, causal):
        generator = torch.Generator(device=q.device)
        generator.manual_seed(seed)
        return attention(q, k, v, method=method, is_causal=causal, scale=scaling, config=config,
                         generator=generator)

    if keep is None:
        out = run(query, key, value, bool(is_causal) and N > 1)
    elif method == "exact":
        out = _exact_with_mask(query, key, value, keep, scaling)
    else:
        if keep.shape[-2] == 1:  # a 2D padding mask: the layer's own causality applies
            keep = keep.expand(B, 1, N, M)
            if is_causal:
                keep = keep & torch.ones(N, M, dtype=torch.bool, device=keep.device).tril(M - N)
        rows = _unpadded(keep)
        if rows is None:
            raise ValueError(
                f"method {patch.method!r} cannot honour a custom attention mask (got a mask of "
                f"shape {list(attention_mask.shape)} that is neither causal nor padding); use "
                f"method='exact' for this layer"
            )
        out = query.new_zeros(*query.shape[:-1], value.shape[-1])
        for b, (q_idx, k_idx, causal) in enumerate(rows):
            if len(q_idx):  # one sequence alone on its own tokens
                out[b, :, q_idx] = run(query[b:b + 1, :, q_idx], key[b:b + 1, :, k_idx],
                                       value[b:b + 1, :, k_idx], causal and len(q_idx) > 1)[0]
    return out.transpose(1, 2).contiguous(), None


class _RegisteredAttention:
    """The callable registered under a name: a layer's own patch wins over the default."""

    def __init__(self, patch: LayerPatch) -> None:
        self.patch = patch
        self.__name__ = implementation_name(patch.method)

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        patch = getattr(module, "kernelsketch_patch", None) or self.patch
        return _layer_attention(module, query, key, value, attention_mask, patch=patch, **kwargs)


# ---------------------------------------------------------------------------
# Registration


def register(
    method: str,
    config: MethodConfig | None = None,
    *,
    name: str | None = None,
    seed: int = 0,
    decode: str = "exact",
) -> str:
    """Register one method with transformers' attention and mask interfaces.

    Parameters
    ----------
    method : kernelsketch method name.
    config : the config used by every layer of a model loaded with this name
        (the method's default when None); see :class:`LayerPatch` for seed, decode.
    name : the ``attn_implementation`` name, default ``"kernelsketch-<method>"``.

    Returns
    -------
    The registered name. Masks are built by transformers' sdpa mask function
    (a plain causal mask is skipped; padding gives a boolean mask).
    """
    patch = LayerPatch(method, config, seed, decode)
    if name is None:
        name = implementation_name(method)
    elif not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    AttentionInterface.register(name, _RegisteredAttention(patch))
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def register_all() -> list[str]:
    """Register every available method as ``"kernelsketch-<method>"`` (idempotent).

    Call again after new methods have been registered with kernelsketch to
    pick them up. Returns the registered names.
    """
    return [register(method) for method in available_methods()]


# ---------------------------------------------------------------------------
# Patching chosen layers


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """The self-attention modules of a transformers model, in layer order.

    These are the modules that hold an integer ``layer_idx`` and a config with
    an ``_attn_implementation`` (the modules that call transformers' attention
    interface), sorted by ``layer_idx``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found = [
        m for m in model.modules()
        if isinstance(getattr(m, "layer_idx", None), int)
        and hasattr(getattr(m, "config", None), "_attn_implementation")
        and type(m).__name__.endswith("Attention")
    ]
    return sorted(found, key=lambda m: m.layer_idx)


def _select(layers_found: list[nn.Module], layers) -> list[nn.Module]:
    count = len(layers_found)
    if layers is None:
        return layers_found
    if isinstance(layers, int) and not isinstance(layers, bool):
        check_int("layers", layers, min=0, max=count)
        return layers_found[count - layers:] if layers else []
    if isinstance(layers, Iterable) and not isinstance(layers, (str, bytes)):
        chosen = list(layers)
        for i in chosen:
            if isinstance(i, bool) or not isinstance(i, int) or not -count <= i < count:
                raise ValueError(
                    f"layers must hold layer indices in [-{count}, {count}), got {chosen}"
                )
        idx = sorted({i % count for i in chosen})
        return [layers_found[i] for i in idx]
    raise TypeError(
        f"layers must be None (all), an int (that many last layers) or an iterable of "
        f"layer indices, got {type(layers).__name__}"
    )


def patch_model(
    model: nn.Module,
    method: str,
    config: MethodConfig | None = None,
    *,
    layers: int | Iterable[int] | None = None,
    seed: int = 0,
    decode: str = "exact",
) -> nn.Module:
    """Switch chosen attention layers of a transformers model to a kernelsketch method.

    Parameters
    ----------
    model : a transformers model (e.g. ``LlamaForCausalLM``); patched in place.
    method : kernelsketch method name ("hyper", "exact", ...).
    config : the method's config (its default when None).
    layers : None for every layer; an int ``L`` for the last ``L`` layers (the
        HyperAttention paper's protocol); or an iterable of layer indices
        (negative counts from the end).
    seed : layer ``l`` uses sketches seeded with ``seed + l`` (deterministic).
    decode : "exact" (default) or "method" for the steps with fewer queries
        than keys (KV-cache decoding).

    Returns
    -------
    The same model. Unpatched layers keep the model's own implementation;
    the model's config, masks and state_dict are unchanged. A layer patched
    twice takes the latest patch; :func:`unpatch` restores the original.
    """
    patch = LayerPatch(method, config, seed, decode)
    found = attention_layers(model)
    if not found:
        raise ValueError(
            f"model must contain transformers attention modules (with layer_idx and config), "
            f"found none in {type(model).__name__}"
        )
    chosen = _select(found, layers)
    if getattr(found[0], "is_causal", True) and not get_method(method).causal:
        raise ValueError(f"method {method!r} does not support causal attention of {type(model).__name__}")
    name = implementation_name(method)
    if name not in AttentionInterface._global_mapping:
        register(method)
    for module in chosen:
        original = module.__dict__.get("_kernelsketch_original_config", module.config)
        # The layer reads config._attn_implementation at every call: it gets a
        # private shallow copy naming the kernelsketch function, while the
        # model-level config (and thus the mask format) stays the model's.
        layer_config = copy.copy(original)
        layer_config._attn_implementation_internal = name
        module._kernelsketch_original_config = original
        module.config = layer_config
        module.kernelsketch_patch = patch
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Restore every layer patched by :func:`patch_model` (in place); returns the model."""
    for module in attention_layers(model):
        original = module.__dict__.pop("_kernelsketch_original_config", None)
        if original is not None:
            module.config = original
            del module.kernelsketch_patch
    return model


def patched_layers(model: nn.Module) -> dict[int, LayerPatch]:
    """``{layer_idx: LayerPatch}`` of the layers currently patched."""
    return {
        m.layer_idx: m.kernelsketch_patch
        for m in attention_layers(model)
        if "_kernelsketch_original_config" in m.__dict__
    }


register_all()
