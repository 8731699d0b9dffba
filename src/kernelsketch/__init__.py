"""kernelsketch: sub-quadratic attention and kernel methods through randomized sketching.

``kernelsketch.attention(q, k, v, method=...)`` is the attention entry point
(SDPA layout); the method configs are exported here too.
"""

from .attn import (
    ExactConfig,
    HyperConfig,
    KDEConfig,
    LevConfig,
    PolynomialConfig,
    PolySketchAttention,
    PolySketchConfig,
    SketchedAttention,
    attention,
    available_methods,
)

__version__ = "0.1.0"

__all__ = [
    "ExactConfig",
    "HyperConfig",
    "KDEConfig",
    "LevConfig",
    "PolySketchAttention",
    "PolySketchConfig",
    "PolynomialConfig",
    "SketchedAttention",
    "__version__",
    "attention",
    "available_methods",
]
