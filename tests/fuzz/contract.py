"""The contract every public entry point keeps, checked by the fuzz tests of this folder.

On any input a call either raises ``TypeError`` / ``ValueError`` whose message
names one of the arguments it was given (or a field of one), or returns finite
output of the documented shape and dtype; it never mutates its inputs. Hangs
are caught by pytest-timeout (the ``timeout`` mark of each fuzz test).

Budget: each test runs ``examples(n)`` examples, ``n`` (sized so the folder
takes well under a minute on 2 cores) times ``KS_FUZZ_SCALE`` (default 1).
The suite's hypothesis profile is derandomized; a longer search with fresh
examples: ``KS_FUZZ_SCALE=20 pytest tests/fuzz -p no:randomly
--hypothesis-seed=<int>`` under a non-derandomized profile.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable

import torch

# Relative float slack of a convex combination computed in each dtype (accumulated in
# float32 for half inputs, then rounded to the input dtype).
SLACK = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def examples(n: int) -> int:
    """The example budget of a fuzz test: ``n`` times ``KS_FUZZ_SCALE`` (default 1)."""
    return n * int(os.environ.get("KS_FUZZ_SCALE", "1"))


def snapshot(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Copies of the tensors' bits (NaN-safe comparison with :func:`assert_unchanged`)."""
    return [t.detach().clone() for t in tensors if isinstance(t, torch.Tensor)]


def assert_unchanged(before: list[torch.Tensor], *tensors: torch.Tensor) -> None:
    """The tensors hold the same bits as their :func:`snapshot`."""
    now = [t for t in tensors if isinstance(t, torch.Tensor)]
    assert len(now) == len(before)
    for old, new in zip(before, now):
        assert old.shape == new.shape and old.dtype == new.dtype
        assert torch.equal(old.view(-1).view(torch.uint8), new.detach().reshape(-1).view(torch.uint8)), \
            "an input was modified in place"


def call_or_clear_error(fn: Callable, names: Iterable[str]):
    """``fn()``, or None when it raised TypeError/ValueError naming one of ``names``.

    Any other exception (RuntimeError from deep inside torch, IndexError, an
    allocator failure, ...) propagates and fails the test, as does a
    TypeError/ValueError that names none of the arguments.
    """
    try:
        return fn()
    except (TypeError, ValueError) as exc:
        message = str(exc)
        named = [n for n in names if re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", message)]
        assert named, f"{type(exc).__name__} names none of {sorted(set(names))}: {message}"
        return None


def assert_finite(name: str, t: torch.Tensor, *, allow_neg_inf: bool = False) -> None:
    """No NaN, no +inf (and no -inf unless allowed: the log-sum-exp of a row with no key)."""
    assert not torch.isnan(t).any(), f"{name} holds NaN"
    assert not (t == float("inf")).any(), f"{name} holds +inf"
    if not allow_neg_inf:
        assert torch.isfinite(t).all(), f"{name} holds -inf"


def assert_within_values(out: torch.Tensor, v: torch.Tensor, *, with_zero: bool) -> None:
    """Each output row is a convex combination of value rows (with the 0 vector when
    ``with_zero``): per batch and head group, out lies in the box of v's columns."""
    vg = v.double().repeat_interleave(out.shape[1] // v.shape[1], dim=1)
    lo, hi = vg.amin(dim=2, keepdim=True), vg.amax(dim=2, keepdim=True)
    if with_zero:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    slack = SLACK[out.dtype] * (vg.abs().amax(dim=(2, 3), keepdim=True) + 1e-300)
    o = out.double()
    assert (o >= lo - slack).all() and (o <= hi + slack).all(), (
        f"output outside the values' range by {float(torch.maximum(lo - o, o - hi).max()):.3g}")
