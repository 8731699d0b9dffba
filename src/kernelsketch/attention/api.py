"""The ``attention`` entry point and the method registry.

A method is one module in this package that defines ``METHOD = MethodSpec(...)``
and one line in :data:`METHOD_MODULES`; nothing else changes.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._checks import check_attention_inputs, check_float, check_generator
from .merge import accumulation_dtype

# name -> module that defines METHOD (imported on first use).
METHOD_MODULES: dict[str, str] = {
    "exact": "kernelsketch.attention.exact",
    "polynomial": "kernelsketch.attention.polynomial",
    "polysketch": "kernelsketch.attention.polysketch",
    "hyper": "kernelsketch.attention.hyper",
    "kde": "kernelsketch.attention.kde",
    "lev": "kernelsketch.attention.lev",
}


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's frozen configuration dataclass.

    Subclasses validate their fields in ``__post_init__`` and raise
    ``ValueError``/``TypeError`` naming the field.
    """

    def replace(self, **changes: Any) -> MethodConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


# forward(q, k, v, *, is_causal, scale, config, generator, need_lse) -> (out, lse | None)
MethodForward = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class MethodSpec:
    """A registered attention method.

    ``forward`` receives validated inputs in SDPA layout (GQA allowed), a
    resolved ``scale`` and ``config``, and returns ``(out, lse)``: ``out`` of
    shape [B, Hq, N, Dv] in any float dtype (cast to q's dtype by
    :func:`attention`), ``lse`` of shape [B, Hq, N] (float32, or float64 for
    float64 inputs) or None when ``need_lse`` is False. ``reference`` names
    the exact method it approximates (None for an exact method itself):
    benchmarks and the demo measure its error against that method.
    """

    name: str
    forward: MethodForward
    config_cls: type[MethodConfig]
    summary: str
    paper: str = ""
    causal: bool = True
    reference: str | None = "exact"


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method to the registry (used by modules not listed in METHOD_MODULES)."""
    _REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The registered :class:`MethodSpec` called ``name``."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a str, got {type(name).__name__}")
    if name not in _REGISTRY and name in METHOD_MODULES:
        module = importlib.import_module(METHOD_MODULES[name])
        register_method(module.METHOD)
    if name not in _REGISTRY:
        raise ValueError(f"method must be one of {available_methods()}, got {name!r}")
    return _REGISTRY[name]


def available_methods() -> list[str]:
    """Names of all registered methods, the exact reference first."""
    return list(dict.fromkeys(list(METHOD_MODULES) + list(_REGISTRY)))


def resolve_config(spec: MethodSpec, config: MethodConfig | None) -> MethodConfig:
    """``config`` checked to be the method's config class, or its default."""
    if config is None:
        return spec.config_cls()
    if not isinstance(config, spec.config_cls):
        raise TypeError(
            f"config for method {spec.name!r} must be a {spec.config_cls.__name__}, "
            f"got {type(config).__name__}"
        )
    return config


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    method: str = "exact",
    is_causal: bool = False,
    scale: float | None = None,
    config: MethodConfig | None = None,
    return_lse: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention ``softmax(q kᵀ · scale) v``, exact or approximated by a sketch.

    Parameters
    ----------
    q : [B, Hq, N, D] float16, bfloat16, float32 or float64.
    k : [B, Hkv, M, D], same dtype and device; Hq must be a multiple of Hkv (GQA).
    v : [B, Hkv, M, Dv].
    method : a name from :func:`available_methods` ("exact" is the reference).
    is_causal : query i sees keys j <= i + (M - N) (aligned bottom-right as in
        FlashAttention when N != M). Rows that see no key return 0.
    scale : logit scale, default ``1/sqrt(D)``.
    config : the method's config dataclass (default config when None).
    return_lse : also return the natural-log log-sum-exp of each row's logits
        (``-inf`` for rows that see no key), shape [B, Hq, N], float32
        (float64 for float64 inputs).
    generator : the only source of randomness of sketched methods.

    Returns
    -------
    out : [B, Hq, N, Dv] in q's dtype, or ``(out, lse)`` when ``return_lse``.
    """
    spec = get_method(method)
    check_attention_inputs(q, k, v)
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    else:
        scale = check_float("scale", scale, min=0.0, min_exclusive=True)
    if is_causal and not spec.causal:
        raise ValueError(f"method {method!r} does not support is_causal=True")
    check_generator(generator, q.device)
    cfg = resolve_config(spec, config)
    out, lse = spec.forward(
        q, k, v, is_causal=is_causal, scale=scale, config=cfg, generator=generator,
        need_lse=bool(return_lse),
    )
    out = out.to(q.dtype)
    if return_lse:
        return out, lse.to(accumulation_dtype(q.dtype))
    return out
