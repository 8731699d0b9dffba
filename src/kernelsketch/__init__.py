"""kernelsketch: sub-quadratic attention and kernel methods through randomized sketching.

``kernelsketch.attention(q, k, v, method=...)`` is the attention entry point
(SDPA layout); the method configs are exported here too.
"""

from . import attention
from .attention import ExactConfig, SketchedAttention, available_methods
from .attention.hyper import HyperConfig
from .attention.kde import KDEConfig
from .attention.lev import LevConfig
from .attention.polynomial import PolynomialConfig
from .attention.polysketch import PolySketchAttention, PolySketchConfig

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
