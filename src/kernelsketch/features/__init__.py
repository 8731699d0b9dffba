"""Kernel feature maps as scikit-learn transformers, with torch functions and exact oracles."""
