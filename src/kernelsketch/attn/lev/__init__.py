"""LevAttention (Kannan, Bhattacharyya, Kacham, Woodruff; arXiv 2410.05462).

- :mod:`.config`: :class:`LevConfig`.
- :mod:`.selection`: the universal set (:func:`universal_set`), streaming and
  mergeable (:class:`LevSelector`).
- :mod:`.method`: ``method="lev"``, attention over the selected keys (+ window).
- :mod:`.kvcache`: :class:`LevKVCache`, KV-cache compression for decoding.

Theory, provenance and measured limits: docs/lev.md.
"""

from .config import LevConfig
from .kvcache import LevKVCache
from .method import power_partial_attention
from .selection import (
    EXACT_SIZE_LIMIT,
    LevSelector,
    score_dtype,
    symmetric_power_features,
    universal_set,
)

__all__ = [
    "EXACT_SIZE_LIMIT",
    "LevConfig",
    "LevKVCache",
    "LevSelector",
    "power_partial_attention",
    "score_dtype",
    "symmetric_power_features",
    "universal_set",
]
