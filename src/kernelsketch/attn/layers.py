"""Attention layers: :class:`SketchedAttention`, any registered method as an ``nn.Module``.

Method-specific layers sit with their method (:class:`~.polysketch.PolySketchAttention`,
:class:`~.lev.LevKVCache`).
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_float, check_int
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
    seed : int in [0, 2**63) seeding the method's randomness; is_causal, scale : as in
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
        if not isinstance(is_causal, bool):
            raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
        self.is_causal = is_causal
        self.scale = None if scale is None else check_float("scale", scale, min=0.0,
                                                            min_exclusive=True)
        # The seed is an int64 buffer (it travels in the state_dict).
        seed = check_int("seed", seed, min=0, max=2**63 - 1)
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.int64))

    def forward(self, q, k, v, *, return_lse: bool = False):
        gen = torch.Generator(device=q.device)
        gen.manual_seed(int(self.seed))
        return attention(
            q, k, v, method=self.method, is_causal=self.is_causal, scale=self.scale,
            config=self.config, return_lse=return_lse, generator=gen,
        )

    def extra_repr(self) -> str:
        return f"method={self.method!r}, is_causal={self.is_causal}, config={self.config}"
