"""Attention: ``kernelsketch.attention(q, k, v, method=...)`` and the methods behind it.

This package is itself callable: ``kernelsketch.attention(...)`` is
:func:`kernelsketch.attention.api.attention`, while submodules stay reachable
(``kernelsketch.attention.hyper``, ``kernelsketch.attention.metrics``...).
"""

from __future__ import annotations

import sys
import types

from . import metrics  # noqa: F401  (ks.attention.metrics)
from .api import (
    MethodConfig,
    MethodSpec,
    attention,
    available_methods,
    get_method,
    register_method,
)
from .exact import ExactConfig
from .module import SketchedAttention

__all__ = [
    "ExactConfig",
    "MethodConfig",
    "MethodSpec",
    "SketchedAttention",
    "attention",
    "available_methods",
    "get_method",
    "register_method",
]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return attention(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
