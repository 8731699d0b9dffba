"""Suite-wide settings.

Under pytest-xdist (one worker per core) intra-op and BLAS threads only
oversubscribe the cores: small FFTs, matmuls and LAPACK calls then stall for
seconds. Every test runs with one torch thread and one BLAS/OpenMP thread.
"""

import pytest
import torch

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # scikit-learn (which brings threadpoolctl) is an optional extra
    threadpool_limits = None


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    if threadpool_limits is None:
        yield
    else:
        with threadpool_limits(1):
            yield
    torch.set_num_threads(previous)
