"""Function recovery by leverage-score sampling."""

from kernelsketch.recovery.spherical import (
    SphericalExpansion,
    default_spherical_samples,
    recover_spherical,
)

__all__ = ["SphericalExpansion", "default_spherical_samples", "recover_spherical"]
