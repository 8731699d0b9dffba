"""kernelsketch: sub-quadratic attention and kernel methods through randomized sketching.

``kernelsketch.attention(q, k, v, method=...)`` is the attention entry point
(SDPA layout); the method configs and layers are exported here too. The methods
live in :mod:`kernelsketch.attn`; kernel feature maps in :mod:`kernelsketch.features`,
inner-product sketches in :mod:`kernelsketch.inner`, function recovery in
:mod:`kernelsketch.recovery`, the shared sketches in :mod:`kernelsketch.sketch`
(layout: docs/architecture.md).

Conventions shared by every subpackage (randomness: ``generator`` for torch
functions, ``random_state`` with scikit-learn's meaning for estimators and numpy
functions, ``seed`` for objects that own fixed randomness; shapes and dtypes) are
in docs/conventions.md.
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
