"""Kernel feature maps as scikit-learn transformers, with torch functions and exact oracles."""
from kernelsketch.features.gegenbauer import (  # noqa: E402,F401
    GegenbauerFeatures,
    gegenbauer,
    gegenbauer_coefficients,
    gegenbauer_features,
    gzk_kernel,
    harmonic_dimension,
    harmonic_space_dimension,
    zonal_kernel,
)
