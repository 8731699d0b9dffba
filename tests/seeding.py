"""Per-test seeds: a stable hash of the test's node id, shifted by ``KS_TEST_SEED_OFFSET``.

The fixtures that hand them out (``seed``, ``torch_generator``, ``random_state``,
``np_rng``) are in tests/conftest.py; tools/stat_runs.py sets the offset.
"""

import hashlib
import os

import numpy as np

SEED_OFFSET_ENV = "KS_TEST_SEED_OFFSET"


def seed_offset() -> int:
    """The int in ``KS_TEST_SEED_OFFSET`` (0 when unset)."""
    raw = os.environ.get(SEED_OFFSET_ENV, "0").strip() or "0"
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{SEED_OFFSET_ENV} must be an int, got {raw!r}") from None


def derive_seed(*keys) -> int:
    """A stable int in ``[0, 2**32)`` from ``keys`` (ints or strings), the same in every process.

    Unlike ``hash()``, which Python salts per process, this is a BLAKE2b digest of
    the keys' text, so xdist workers and reruns agree.
    """
    text = "\x1f".join(str(k) for k in keys).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "little")


def derive_seeds(seed: int, count: int, high: int = 2**63) -> list[int]:
    """``count`` independent ints in ``[0, high)`` from ``seed`` (e.g. the hashing seeds of
    many sketches, each its own draw, different for every seed offset)."""
    return [int(s) for s in np.random.default_rng([seed, 0x5EED]).integers(0, high, size=count)]
