"""Attention layers: :class:`SketchedAttention`, any registered method as an ``nn.Module``.

Method-specific layers sit with their method (:class:`~.polysketch.PolySketchAttention`,
:class:`~.lev.LevKVCache`).
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_int
from .api import attention, get_method, resolve_config
from .common.spec import MethodConfig


class SketchedAttention(nn.Module):
    """Attention layer (no projections) computing ``attention(q, k, v, method=...)``.

    Every random draw of the method comes from a generator re-seeded from the
    ``seed`` buffer at each forward, so the layer is deterministic and its
    state_dict reproduces it.

    Parameters
    ----------
    method : registered method name; config : its config (default when None);
    seed : int seed of the method's randomness; is_causal, scale : as in
    :func:`kernelsketch.attention`.
    """

    def __init__(
        self,
        method: str = "exact",
        config: MethodConfig | None = None,
        *,
        seed: int = 0,
        is_causal: bool = False,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        self.method = method
        self.config = resolve_config(get_method(method), config)
        self.is_causal = is_causal
        self.scale = scale
        self.register_buffer("seed", torch.tensor(check_int("seed", seed, min=0), dtype=torch.int64))

    def forward(self, q, k, v, *, return_lse: bool = False):
        gen = torch.Generator(device=q.device)
        gen.manual_seed(int(self.seed))
        return attention(
            q, k, v, method=self.method, is_causal=self.is_causal, scale=self.scale,
            config=self.config, return_lse=return_lse, generator=gen,
        )

    def extra_repr(self) -> str:
        return f"method={self.method!r}, is_causal={self.is_causal}, config={self.config}"
