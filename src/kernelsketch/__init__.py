"""kernelsketch: sub-quadratic attention and kernel methods through randomized sketching."""

__version__ = "0.1.0"
