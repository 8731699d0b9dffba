"""The ``attention`` entry point and the method registry.

A method is one folder in this package whose ``method.py`` defines
``METHOD = MethodSpec(...)``, plus one line in :data:`_BUILTIN` below.
"""

from __future__ import annotations

import logging
import math

import torch

from .._checks import (
    check_attention_inputs,
    check_float,
    check_generator,
    check_int,
    check_logit_range,
)
from .common.budget import BudgetChoice
from .common.exact import METHOD as EXACT
from .common.merge import accumulation_dtype
from .common.spec import MethodConfig, MethodSpec
from .hyper.method import METHOD as HYPER
from .kde.method import METHOD as KDE
from .lev.method import METHOD as LEV
from .polysketch.method import METHOD as POLYSKETCH
from .polysketch.polynomial import METHOD as POLYNOMIAL

# The built-in methods, the exact reference first.
_BUILTIN: tuple[MethodSpec, ...] = (EXACT, POLYNOMIAL, POLYSKETCH, HYPER, KDE, LEV)
_REGISTRY: dict[str, MethodSpec] = {spec.name: spec for spec in _BUILTIN}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method to the registry (a method defined outside this package)."""
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"spec must be a MethodSpec, got {type(spec).__name__}")
    _REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The registered :class:`MethodSpec` called ``name``."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a str, got {type(name).__name__}")
    if name not in _REGISTRY:
        raise ValueError(f"method must be one of {available_methods()}, got {name!r}")
    return _REGISTRY[name]


def available_methods() -> list[str]:
    """Names of all registered methods, the exact reference first."""
    return list(_REGISTRY)


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


_LOG = logging.getLogger("kernelsketch.attn")

# Target of config="auto" without error=: the normalised spectral error the defaults reach
# on inputs with planted heavy entries (BENCHMARKS.md).
AUTO_ERROR = 0.2


def choose_budget(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    method: str,
    error: float = AUTO_ERROR,
    is_causal: bool = False,
    scale: float | None = None,
    config: MethodConfig | None = None,
    generator: torch.Generator | None = None,
    rows: int = 256,
) -> BudgetChoice:
    """The method's budget for these inputs from a target normalised spectral error.

    Predicts, on ``rows`` uniformly sampled query rows per head, the error
    ‖Õ − D⁻¹AV‖₂ / (‖D⁻¹A‖₂‖V‖₂) (mean over heads, the rows' submatrix as in
    :func:`~kernelsketch.attn.metrics.spectral_error` with ``num_rows``) of every
    sample size, and returns the smallest that meets ``error`` with the estimate
    (docs/hyper.md, "Automatic budget"). ``config`` (default: the method's
    default) gives the other fields. Methods: those whose spec has ``auto``
    ("hyper", "kde"); causal inputs need as many queries as keys.
    """
    spec = get_method(method)
    if spec.auto is None:
        names = [m for m in available_methods() if get_method(m).auto is not None]
        raise ValueError(f"method must be one of {names} for an automatic budget, got {method!r}")
    check_attention_inputs(q, k, v)
    if is_causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"an automatic causal budget needs as many queries as keys, got "
                         f"N={q.shape[2]} and M={k.shape[2]}")
    error = check_float("error", error, min=0.0, min_exclusive=True)
    check_int("rows", rows, min=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else check_float(
        "scale", scale, min=0.0, min_exclusive=True)
    check_generator(generator, q.device)
    return spec.auto(q, k, v, is_causal=is_causal, scale=scale, error=error,
                     config=resolve_config(spec, config), generator=generator, rows=rows)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    method: str = "exact",
    is_causal: bool = False,
    scale: float | None = None,
    config: MethodConfig | str | None = None,
    return_lse: bool = False,
    generator: torch.Generator | None = None,
    error: float | None = None,
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
    config : the method's config dataclass (default config when None), or
        ``"auto"``: the budget chosen for this call from the target ``error``
        (:func:`choose_budget`; the choice and its estimated error are logged
        at INFO on the ``kernelsketch.attn`` logger).
    return_lse : also return the natural-log log-sum-exp of each row's logits
        (``-inf`` for rows that see no key), shape [B, Hq, N], float32
        (float64 for float64 inputs).
    generator : the only source of randomness of sketched methods.
    error : target normalised spectral error of ``config="auto"`` (default
        :data:`AUTO_ERROR`); giving it implies ``config="auto"`` (on the given
        config's other fields when config is a config).

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
    if spec.name == "exact" or spec.reference == "exact":  # softmax logits (polynomial rescales)
        check_logit_range(q, k, scale)
    if isinstance(config, str) or error is not None:
        if isinstance(config, str) and config != "auto":
            raise ValueError(f"config must be a config dataclass, None or 'auto', got {config!r}")
        choice = choose_budget(q, k, v, method=method, is_causal=is_causal, scale=scale,
                               error=AUTO_ERROR if error is None else error,
                               config=None if isinstance(config, str) else config,
                               generator=generator)
        _LOG.info("method=%r config='auto': %s, estimated normalised spectral error %.3g "
                  "(target %.3g)", method, choice.config, choice.estimated_error, choice.target)
        config = choice.config
    cfg = resolve_config(spec, config)
    out, lse = spec.forward(
        q, k, v, is_causal=is_causal, scale=scale, config=cfg, generator=generator,
        need_lse=bool(return_lse),
    )
    out = out.to(q.dtype)
    if return_lse:
        return out, lse.to(accumulation_dtype(q.dtype))
    return out
