"""KV-cache compression for decoding with LevAttention's universal set.

The cache keeps the last ``window`` tokens exactly and streams every token
that leaves the window into a :class:`~.selection.LevSelector`, which keeps the
evicted tokens of the universal set (``budget`` largest leverage scores, or
every score >= ``eps``) and the d x d Gram. Memory per head: ``window +
evict_block + budget`` tokens plus the Gram, whatever the sequence length.
Guarantee (threshold mode, ``|x|^p``): an evicted key whose attention over all
tokens so far is >= eps stays in the cache; the selection is strictly causal.
Theory: docs/lev.md (Kannan et al., arXiv 2410.05462, streaming).
"""

from __future__ import annotations

import math

import torch

from ..._checks import (
    _shape,
    check_attention_inputs,
    check_float,
    check_int,
    check_same,
    check_tensor,
)
from ..common.exact import partial_attention
from ..common.gqa import fold_groups, query_positions, unfold_groups
from .selection import LevSelector

__all__ = ["LevKVCache"]
class LevKVCache:
    """Compressed KV cache: recent window + streaming universal set of evicted tokens.

    Parameters
    ----------
    budget : evicted keys kept per key/value head (give ``budget`` or ``eps``).
    eps : keep every evicted key of leverage score >= eps instead.
    window : most recent tokens kept exactly (>= 0).
    p : even exponent of the scores (2: leverage scores of K).
    ridge : relative ridge of the scores (see :class:`~kernelsketch.attn.lev.LevConfig`).
    evict_block : tokens leave the window in blocks of this many (the window
        then holds ``window`` to ``window + evict_block - 1`` recent tokens), so
        the selector rescores once per block instead of once per token.
    sketch_size, seed : PolySketch features for p >= 4 (see
        :class:`~kernelsketch.attn.lev.selection.LevSelector`; needed when the
        exact ``C(d + p/2 - 1, p/2)`` features exceed ``EXACT_SIZE_LIMIT``).

    Examples
    --------
    >>> cache = LevKVCache(budget=32, window=64)
    >>> for k_t, v_t, q_t in steps:          # [B, Hkv, 1, D], [B, Hkv, 1, Dv], [B, Hq, 1, D]
    ...     out_t = cache.append(k_t, v_t).attend(q_t)
    """

    def __init__(
        self,
        *,
        budget: int | None = 32,
        eps: float | None = None,
        window: int = 64,
        p: int = 2,
        ridge: float = 0.0,
        evict_block: int = 16,
        sketch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        if eps is not None:
            budget = None
        self.window = check_int("window", window, min=0)
        self.evict_block = check_int("evict_block", evict_block, min=1)
        self.selector = LevSelector(p=p, eps=eps, budget=budget, ridge=ridge,
                                    sketch_size=sketch_size, seed=seed)
        self.num_tokens = 0
        self._recent_k: torch.Tensor | None = None
        self._recent_v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> LevKVCache:
        """Append new tokens: k [B, Hkv, m, D], v [B, Hkv, m, Dv] (positions continue the stream)."""
        check_tensor("k", k, ndim=4)
        check_tensor("v", v, ndim=4)
        if v.shape[:3] != k.shape[:3]:
            raise ValueError(f"v must have shape [B, Hkv, m, Dv] with [B, Hkv, m] = "
                             f"{list(k.shape[:3])} like k, got {_shape(v)}")
        if self._recent_k is not None:
            rk, rv = self._recent_k, self._recent_v
            if k.shape[:2] != rk.shape[:2] or k.shape[-1] != rk.shape[-1] or \
                    v.shape[-1] != rv.shape[-1]:
                raise ValueError(
                    f"k, v must have shapes [{rk.shape[0]}, {rk.shape[1]}, m, {rk.shape[-1]}] and "
                    f"[..., {rv.shape[-1]}] like the cached tokens, got {_shape(k)} and {_shape(v)}"
                )
            check_same(("cached keys", "k", "v"), (rk, k, v))
        else:
            check_same(("k", "v"), (k, v))
        self.num_tokens += k.shape[2]
        if self._recent_k is not None:
            k, v = torch.cat((self._recent_k, k), dim=2), torch.cat((self._recent_v, v), dim=2)
        evict = k.shape[2] - self.window
        if evict >= self.evict_block:
            self.selector.update(k[:, :, :evict], v[:, :, :evict])
            k, v = k[:, :, evict:], v[:, :, evict:]
        self._recent_k, self._recent_v = k, v
        return self

    def keys(self) -> torch.Tensor:
        """Cached keys [B, Hkv, S, D]: selected evicted tokens, then the recent window."""
        return self._cat(self.selector.keys, self._recent("keys")[0])

    def values(self) -> torch.Tensor:
        """Cached values [B, Hkv, S, Dv], aligned with :meth:`keys`."""
        return self._cat(self.selector.values, self._recent("values")[1])

    def positions(self) -> torch.Tensor:
        """Stream positions [B, Hkv, S] of the cached tokens (-1 marks padded slots)."""
        rk = self._recent("positions")[0]
        start = self.num_tokens - rk.shape[2]
        recent = torch.arange(start, self.num_tokens, device=rk.device).expand(*rk.shape[:3])
        return self._cat(self.selector.positions, recent)

    def attend(self, q: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
        """Exact softmax attention of the newest tokens' queries over the cache.

        Parameters
        ----------
        q : [B, Hq, N, D], the queries of the last N appended tokens (Hq a
            multiple of Hkv); query i sits at position ``num_tokens - N + i``
            and sees cached tokens at positions <= its own.
        scale : logit scale, default ``1/sqrt(D)``.

        Returns
        -------
        [B, Hq, N, Dv] in q's dtype.
        """
        k, v, pos = self.keys(), self.values(), self.positions()
        check_tensor("q", q, ndim=4)
        if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
            raise ValueError(f"q must have shape [{k.shape[0]}, Hq, N, {k.shape[-1]}] (batch and "
                             f"head dim of the cached keys), got {_shape(q)}")
        check_attention_inputs(q, k, v)
        N = q.shape[2]
        if N > self.num_tokens:
            raise ValueError(f"q must hold the queries of at most the {self.num_tokens} appended "
                             f"tokens, got N={N}")
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else check_float(
            "scale", scale, min=0.0, min_exclusive=True)
        Hq, Hkv = q.shape[1], k.shape[1]
        q_pos = query_positions(N, self.num_tokens, Hq // Hkv, q.device)
        mask = (pos >= 0).unsqueeze(2) & (pos.unsqueeze(2) <= q_pos[None, None, :, None])
        out, _ = partial_attention(fold_groups(q, Hkv), k, v, scale=scale, mask=mask)
        return unfold_groups(out, Hq).to(q.dtype)

    @property
    def size(self) -> int:
        """Cached tokens per head (including padded slots)."""
        return self.keys().shape[2]

    def _recent(self, what: str):
        if self._recent_k is None:
            raise ValueError(f"{what}() needs at least one append(k, v) first, got none")
        return self._recent_k, self._recent_v

    @staticmethod
    def _cat(selected: torch.Tensor | None, recent: torch.Tensor) -> torch.Tensor:
        return recent if selected is None else torch.cat((selected, recent), dim=2)
