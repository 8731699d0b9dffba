"""Shared randomized primitives: projections, tensor sketches, LSH, leverage scores, sampling."""
