"""Kernel feature maps as scikit-learn transformers, with torch functions and exact oracles.

Transformers take ``random_state`` (scikit-learn's meaning) and draw their
feature map once, in ``fit`` (docs/conventions.md). Theory, one page per family:
docs/neural_kernels.md (NTK, CNTK, dual activations), docs/polynomial_features.md,
docs/gegenbauer.md, docs/weighted_random_binning.md, docs/rls_nystroem.md,
docs/kernel_ridge.md.
"""
from kernelsketch.features.activations import (  # noqa: F401
    ACTIVATIONS,
    Activation,
    ActivationKernelSketch,
    hermite_coefficients,
    piecewise_linear,
    relu_hermite_coefficients,
)
from kernelsketch.features.binning import (  # noqa: F401
    MAX_WEIGHT_ORDER,
    WeightedRandomBinning,
    weight_fourth_moment,
    weighted_binning_kernel,
)
from kernelsketch.features.cntk import (  # noqa: F401
    CNTKSketch,
    cnngp_relu,
    cntk_relu,
    conv_neural_kernel,
)
from kernelsketch.features.gegenbauer import (  # noqa: F401
    GegenbauerFeatures,
    gegenbauer,
    gegenbauer_coefficients,
    gegenbauer_features,
    gzk_kernel,
    harmonic_dimension,
    harmonic_space_dimension,
    zonal_kernel,
)
from kernelsketch.features.krr import KernelRidge, conjugate_gradient, ridge_solve  # noqa: F401
from kernelsketch.features.neural import dual_activation, neural_kernel  # noqa: F401
from kernelsketch.features.ntk import (  # noqa: F401
    NTKRandomFeatures,
    NTKSketch,
    nngp_relu,
    ntk_relu,
)
from kernelsketch.features.nystroem import RLSNystroem, pairwise_kernel  # noqa: F401
from kernelsketch.features.polynomial import (  # noqa: F401
    PolynomialLeverageSampler,
    PolynomialSketch,
)
