"""Suite-wide settings: one thread per test, per-test seeds, the hypothesis profile.

Threads. Under pytest-xdist (one worker per core) intra-op and BLAS threads only
oversubscribe the cores: small FFTs, matmuls and LAPACK calls then stall for
seconds. Every test runs with one torch thread and one BLAS/OpenMP thread.

Seeds. Every random input of a test comes from a generator seeded by the
``seed`` fixture: an int in ``[0, 2**32)`` derived from the test's node id
(a stable hash, so it is the same under xdist, in any order, in any process).
The environment variable ``KS_TEST_SEED_OFFSET`` (an int, default 0) shifts
every derived seed. The seed of a failing test is printed in its report
("seed: ..."), and ``KS_TEST_SEED_OFFSET=<offset> pytest <node id>`` reproduces it.

Statistical tests (marked ``statistical``: pass or fail with the draws) are
rerun under many offsets by ``--seed-repeats N [--seed-first K]``: each such
test runs once per offset ``K .. K+N-1`` (the node id gains ``seedrepK``; its
seed is the one ``KS_TEST_SEED_OFFSET=K`` gives). ``tools/stat_runs.py`` drives
this and reports, per test, its failures and the distribution of what it
recorded with the ``measure`` fixture (``measure("ratio", value)``: the
statistic the threshold bounds), from which thresholds are set.

Fixtures built on ``seed`` (use the one the code under test takes,
docs/conventions.md):

- ``torch_generator``: a CPU ``torch.Generator`` seeded with ``seed``;
- ``random_state``: a ``numpy.random.RandomState(seed)`` (scikit-learn's
  ``random_state``);
- ``np_rng``: a ``numpy.random.Generator`` (``np.random.default_rng(seed)``) for
  the test's own data.

A test needing several independent streams derives them from ``seed``, e.g.
``np.random.default_rng([seed, i])`` or ``torch.Generator().manual_seed(seed + i)``;
``tests.seeding.derive_seed(seed, *keys)`` gives a further int seed.

Hypothesis (tests/fuzz/). The profile ``kernelsketch`` is loaded for the whole
suite: derandomized (the examples are a function of the test alone), no
deadline (the machine is shared; timings are not a contract), a fixed budget
per test set in each fuzz file with ``@settings(max_examples=...)``.
"""

import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

from tests.seeding import SEED_OFFSET_ENV, derive_seed, seed_offset

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # scikit-learn (which brings threadpoolctl) is an optional extra
    threadpool_limits = None

settings.register_profile(
    "kernelsketch",
    derandomize=True,
    deadline=None,
    max_examples=50,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("kernelsketch")


_REPEAT_ID = re.compile(r"seedrep(\d+)")


def pytest_addoption(parser):
    group = parser.getgroup("kernelsketch seeds")
    group.addoption("--seed-repeats", type=int, default=0, metavar="N",
                    help="run each test marked 'statistical' under N seed offsets")
    group.addoption("--seed-first", type=int, default=1, metavar="K",
                    help="first seed offset of --seed-repeats (default 1; 0 is the suite's own)")


@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc):
    repeats = metafunc.config.getoption("seed_repeats")
    if repeats and metafunc.definition.get_closest_marker("statistical"):
        first = metafunc.config.getoption("seed_first")
        offsets = range(first, first + repeats)
        metafunc.fixturenames.append("_seed_repeat")
        metafunc.parametrize("_seed_repeat", offsets, ids=[f"seedrep{o}" for o in offsets])


def _base_nodeid(nodeid: str) -> tuple[str, int | None]:
    """The node id without its ``seedrepK`` parameter, and K (None when absent)."""
    match = _REPEAT_ID.search(nodeid)
    if match is None:
        return nodeid, None
    base = nodeid.replace(f"-{match.group(0)}", "").replace(f"{match.group(0)}-", "")
    return base.replace(f"[{match.group(0)}]", ""), int(match.group(1))


@pytest.fixture
def seed(request) -> int:
    """The test's seed: ``derive_seed(node id)``, or ``derive_seed(node id, offset)`` when
    ``KS_TEST_SEED_OFFSET`` or ``--seed-repeats`` gives a nonzero offset."""
    nodeid, repeat = _base_nodeid(request.node.nodeid)
    offset = seed_offset() if repeat is None else repeat
    value = derive_seed(nodeid) if offset == 0 else derive_seed(nodeid, offset)
    request.node.user_properties.append(("seed", value))
    return value


@pytest.fixture
def measure(record_property):
    """``measure(name, value)`` records a test statistic (returned unchanged) for
    tools/stat_runs.py, which reports its distribution over seed offsets."""

    def record(name: str, value):
        record_property(f"measure:{name}", repr(float(value)))
        return value

    return record


@pytest.fixture
def torch_generator(seed) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with the test's ``seed``."""
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def random_state(seed) -> np.random.RandomState:
    """``numpy.random.RandomState(seed)``: a ``random_state`` in scikit-learn's meaning."""
    return np.random.RandomState(seed)


@pytest.fixture
def np_rng(seed) -> np.random.Generator:
    """``numpy.random.default_rng(seed)`` for the test's own data."""
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        seeds = [v for k, v in item.user_properties if k == "seed"]
        if seeds:
            _, repeat = _base_nodeid(item.nodeid)
            offset = seed_offset() if repeat is None else repeat
            report.sections.append(("seed", f"seed: {seeds[0]} ({SEED_OFFSET_ENV}={offset})"))


def pytest_report_header(config):
    offset = seed_offset()
    return None if offset == 0 else f"{SEED_OFFSET_ENV}={offset}"


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
