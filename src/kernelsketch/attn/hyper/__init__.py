"""HyperAttention (Han, Jayaram, Karbasi, Mirrokni, Woodruff, Zandieh; arXiv 2310.05869).

- :mod:`.config`: :class:`HyperConfig`.
- :mod:`.naive`: the torch path (reference of the kernels), any device and dtype.
- :mod:`.fused`: the same estimator through the fused sortLSH Triton kernels.
- :mod:`.method`: the registry entry (exact fallback, causal recursion, dispatch).

Theory, provenance and measured limits: docs/hyper.md.
"""

from .config import HyperConfig
from .naive import hyper_noncausal

__all__ = ["HyperConfig", "hyper_noncausal"]
