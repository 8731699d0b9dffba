"""Per-test seeded randomness for the recovery tests."""

import zlib

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A ``numpy.random.RandomState`` seeded from the test's id (reproducible, distinct per test).

    A RandomState (not a ``numpy.random.Generator``) so that it can also be passed as
    ``random_state`` (scikit-learn's meaning, docs/conventions.md).
    """
    return np.random.RandomState(zlib.crc32(request.node.nodeid.encode()))
