"""Function recovery by leverage-score sampling.

Spherical-harmonic expansions (:func:`recover_spherical`) and signals with a
known power spectrum (:func:`reconstruct_signal`); ``random_state`` has
scikit-learn's meaning (docs/conventions.md). Theory: docs/recovery.md.
"""

from kernelsketch.recovery.fourier import (
    Bandlimited,
    GaussianSpectrum,
    MaternSpectrum,
    Multiband,
    PowerSpectrum,
    ReconstructedSignal,
    SparseFrequencies,
    default_signal_samples,
    reconstruct_signal,
    sample_universal,
    statistical_dimension,
    universal_density,
)
from kernelsketch.recovery.spherical import (
    SphericalExpansion,
    default_spherical_samples,
    recover_spherical,
)

__all__ = [
    "Bandlimited",
    "GaussianSpectrum",
    "MaternSpectrum",
    "Multiband",
    "PowerSpectrum",
    "ReconstructedSignal",
    "SparseFrequencies",
    "SphericalExpansion",
    "default_signal_samples",
    "default_spherical_samples",
    "reconstruct_signal",
    "recover_spherical",
    "sample_universal",
    "statistical_dimension",
    "universal_density",
]
