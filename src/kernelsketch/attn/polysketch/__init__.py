"""PolySketchFormer (Kacham, Mirrokni, Zhong; arXiv 2310.01655): polynomial attention.

- :mod:`.polynomial`: exact polynomial attention (``method="polynomial"``), the reference.
- :mod:`.config`: :class:`PolySketchConfig`.
- :mod:`.features`: the sketches φ (random and learned) and Φ = φ ⊗ φ.
- :mod:`.naive`: the torch path (block-causal, linear and quadratic forms).
- :mod:`.kernels`, :mod:`.fused`: the causal Triton kernels and their autograd Function.
- :mod:`.method`: ``method="polysketch"`` (dispatch between the two paths).
- :mod:`.layer`: :class:`PolySketchAttention`, the layer with decoding state.

Theory, provenance and differences from the paper's code: docs/polysketch.md.
"""

from .config import PolySketchConfig
from .features import LearnedDegree2Sketch, MLPDegree2Sketch, PolySketchFeatures
from .layer import PolySketchAttention, PolySketchState
from .method import sketched_polynomial_attention
from .polynomial import PolynomialConfig

__all__ = [
    "LearnedDegree2Sketch",
    "MLPDegree2Sketch",
    "PolySketchAttention",
    "PolySketchConfig",
    "PolySketchFeatures",
    "PolySketchState",
    "PolynomialConfig",
    "sketched_polynomial_attention",
]
