"""The fuzz contract (tests/fuzz/contract.py) for numpy / pandas / list inputs.

``check(fn, *args, names=..., **kwargs)`` runs ``fn`` under
:func:`tests.fuzz.contract.call_or_clear_error` (None for a ValueError /
TypeError naming one of ``names``; any other exception fails) and asserts that
no argument changed: numpy arrays, pandas objects, torch tensors and the lists,
tuples and dicts holding them are compared with their copies taken before.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from tests.fuzz.contract import call_or_clear_error


def _copy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, (list, tuple)):
        return [_copy(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if type(obj).__module__.startswith("pandas"):
        return obj.copy(deep=True)
    return obj


def _same(before: Any, now: Any) -> bool:
    if isinstance(before, torch.Tensor):
        if before.shape != now.shape or before.dtype != now.dtype:
            return False
        if before.numel() == 0:
            return True
        return torch.equal(  # bit patterns: NaN-safe
            before.contiguous().view(-1).view(torch.uint8),
            now.detach().contiguous().view(-1).view(torch.uint8),
        )
    if isinstance(before, np.ndarray):
        if before.dtype.kind == "O":  # the copy holds the same objects: none replaced
            return before.shape == now.shape and all(
                a is b for a, b in zip(before.flat, now.flat)
            )
        return before.shape == now.shape and before.tobytes() == now.tobytes()
    if isinstance(before, list):
        return len(before) == len(now) and all(_same(b, n) for b, n in zip(before, now))
    if isinstance(before, dict):
        return before.keys() == now.keys() and all(_same(before[k], now[k]) for k in before)
    if type(before).__module__.startswith("pandas"):
        return bool(before.equals(now))
    return True


def check(fn, *args, names, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` or None for a clear error; fails if an input changed."""
    before = _copy([list(args), dict(kwargs)])
    out = call_or_clear_error(lambda: fn(*args, **kwargs), names)
    assert _same(before, [list(args), dict(kwargs)]), "an input was modified by the call"
    return out


def finite(x: Any) -> bool:
    """Every number in ``x`` (tensor, array, scipy sparse, float, or a list of them) is finite."""
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x).all()) if x.is_floating_point() else True
    if isinstance(x, np.ndarray):
        return bool(np.all(np.isfinite(x))) if x.dtype.kind in "fc" else True
    if hasattr(x, "toarray"):
        return finite(x.toarray())
    if isinstance(x, (list, tuple)):
        return all(finite(v) for v in x)
    return math.isfinite(float(x))
