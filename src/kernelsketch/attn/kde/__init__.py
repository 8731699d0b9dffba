"""KDEformer (Zandieh, Han, Daliri, Karbasi; arXiv 2302.02451).

- :mod:`.config`: :class:`KDEConfig`.
- :mod:`.naive`: the torch path (reference of the kernels), any device and dtype.
- :mod:`.fused`: the same estimator through the fused sortLSH Triton kernels.
- :mod:`.method`: the registry entry (exact fallback, causal recursion, dispatch).

Theory, provenance and measured limits: docs/kde.md.
"""

from .config import KDEConfig
from .naive import amm_probabilities, kde_noncausal

__all__ = ["KDEConfig", "amm_probabilities", "kde_noncausal"]
