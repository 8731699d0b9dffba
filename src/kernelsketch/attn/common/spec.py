"""What every attention method declares: its frozen config class and its registry spec."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


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
    :func:`kernelsketch.attention`), ``lse`` of shape [B, Hq, N] (float32, or
    float64 for float64 inputs) or None when ``need_lse`` is False.
    ``reference`` names the exact method it approximates (None for an exact
    method itself): benchmarks and the demo measure its error against it.
    ``auto`` (optional) chooses the config per call from a target error:
    ``auto(q, k, v, *, is_causal, scale, error, config, generator, rows)``
    returns a :class:`~kernelsketch.attn.common.budget.BudgetChoice`
    (``config="auto"`` in :func:`kernelsketch.attention`).
    """

    name: str
    forward: MethodForward
    config_cls: type[MethodConfig]
    summary: str
    paper: str = ""
    causal: bool = True
    reference: str | None = "exact"
    auto: Callable[..., Any] | None = None
