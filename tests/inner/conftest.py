"""Synthetic vector pairs for the inner-product sketch tests."""

import numpy as np
import pytest


def make_pair(rng, n, nnz, overlap, *, corr=0.7, outliers=0.1, outlier_scale=10.0):
    """Two length-n vectors with nnz nonzeros each, sharing round(overlap * nnz) indices.

    Values are N(0, 1) with a fraction ``outliers`` scaled by ``outlier_scale``
    (heavy entries); on the shared indices b is correlated with a (``corr``),
    following the synthetic design of Daliri et al. (2024), §6.
    """
    shared = round(overlap * nnz)
    idx = rng.permutation(n)[: 2 * nnz - shared]
    ia, ib = idx[:nnz], np.concatenate([idx[:shared], idx[nnz:]])
    a, b = np.zeros(n), np.zeros(n)
    a[ia] = rng.normal(size=nnz)
    b[ib] = rng.normal(size=nnz)
    b[idx[:shared]] = corr * a[idx[:shared]] + np.sqrt(1 - corr**2) * b[idx[:shared]]
    for v, supp in ((a, ia), (b, ib)):
        heavy = rng.random(nnz) < outliers
        v[supp[heavy]] *= outlier_scale
    return a, b


@pytest.fixture
def pair():
    return make_pair
