"""Sketch tests run many tiny tensor ops; under pytest-xdist (one worker per
core) intra-op threads only oversubscribe the cores, which makes small FFTs
and matmuls orders of magnitude slower. Run each test single-threaded."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
