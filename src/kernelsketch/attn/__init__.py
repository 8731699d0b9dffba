"""Sketched attention: the methods behind ``kernelsketch.attention(q, k, v, method=...)``.

Layout (one folder per method, shared machinery in :mod:`.common`):

- :mod:`.api`: the entry point :func:`attention` and the method registry.
- :mod:`.common`: exact reference, LSE merge, causal recursion, sortLSH, GQA, metrics.
- :mod:`.hyper`, :mod:`.kde`, :mod:`.polysketch`, :mod:`.lev`: the methods.
- :mod:`.layers`: :class:`SketchedAttention`.

The package is ``kernelsketch.attn`` so that ``kernelsketch.attention`` can be
the function :func:`attention` without hiding a package of the same name
(``import kernelsketch.attn.hyper as h`` works as usual).
"""

from .api import (
    attention,
    available_methods,
    choose_budget,
    get_method,
    register_method,
    resolve_config,
)
from .common import metrics
from .common.exact import ExactConfig
from .common.spec import MethodConfig, MethodSpec
from .hyper import HyperConfig
from .kde import KDEConfig
from .layers import SketchedAttention
from .lev import LevConfig
from .polysketch import PolynomialConfig, PolySketchAttention, PolySketchConfig

__all__ = [
    "ExactConfig",
    "HyperConfig",
    "KDEConfig",
    "LevConfig",
    "MethodConfig",
    "MethodSpec",
    "PolySketchAttention",
    "PolySketchConfig",
    "PolynomialConfig",
    "SketchedAttention",
    "attention",
    "available_methods",
    "choose_budget",
    "get_method",
    "metrics",
    "register_method",
    "resolve_config",
]
