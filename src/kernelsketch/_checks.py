"""Input validation shared by every public entry point.

Every function raises ``TypeError`` (wrong kind of object or dtype) or
``ValueError`` (wrong shape, range, device, non-finite values) with a message
that names the argument, what was expected and what was given.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Finiteness costs one reduction pass per input; benchmarks of very long
# sequences may switch it off with KERNELSKETCH_CHECK_FINITE=0.
CHECK_FINITE = os.environ.get("KERNELSKETCH_CHECK_FINITE", "1") != "0"


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every entry is finite: one min/max pass (NaN and ±inf reach the min or the
    max), about 10x faster than ``torch.isfinite(x).all()``, which writes a bool tensor."""
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def check_tensor(
    name: str,
    x: Any,
    *,
    ndim: int | Sequence[int] | None = None,
    dtypes: Iterable[torch.dtype] | None = FLOAT_DTYPES,
    finite: bool = True,
    nonempty: bool = True,
) -> torch.Tensor:
    """Check that ``x`` is a tensor of the given rank(s) and dtype(s), non-empty and finite."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {_shape(x)}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if x.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{name} must have dtype in ({names}), got {x.dtype}")
    if x.is_meta:
        raise ValueError(
            f"{name} must hold data (a cpu or cuda tensor), got a tensor on the meta device: "
            "kernelsketch's methods choose keys and samples from the values"
        )
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {_shape(x)}")
    if finite and CHECK_FINITE and x.is_floating_point() and x.numel() and not _all_finite(x):
        raise ValueError(f"{name} must be finite, found NaN or infinite values")
    return x


def check_same(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    """Check that tensors share dtype and device."""
    first = tensors[0]
    for n, t in zip(names[1:], tensors[1:]):
        if t.dtype != first.dtype:
            raise TypeError(
                f"{n} must have the same dtype as {names[0]} ({first.dtype}), got {t.dtype}"
            )
        if t.device != first.device:
            raise ValueError(
                f"{n} must be on the same device as {names[0]} ({first.device}), got {t.device}"
            )


def check_attention_inputs(
    q: Any, k: Any, v: Any, *, same_head_dim: bool = True
) -> tuple[int, int, int, int, int]:
    """Validate SDPA-layout attention inputs.

    q: [B, Hq, N, D]; k: [B, Hkv, M, D]; v: [B, Hkv, M, Dv]; Hq a multiple of Hkv.
    Returns (B, Hq, Hkv, N, M).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=4)
    check_same(("q", "k", "v"), (q, k, v))
    B, Hq, N, D = q.shape
    Bk, Hkv, M, Dk = k.shape
    Bv, Hv, Mv, _ = v.shape
    if Bk != B or Bv != B:
        raise ValueError(
            f"k and v must have batch size {B} like q [B, Hq, N, D]={_shape(q)}, "
            f"got k {_shape(k)} and v {_shape(v)}"
        )
    if Hv != Hkv:
        raise ValueError(f"v must have {Hkv} heads like k {_shape(k)}, got v {_shape(v)}")
    if Hq % Hkv != 0:
        raise ValueError(
            f"q's head count must be a multiple of k's head count (GQA), got Hq={Hq}, Hkv={Hkv}"
        )
    if Mv != M:
        raise ValueError(f"v must have {M} keys like k {_shape(k)}, got v {_shape(v)}")
    if same_head_dim and Dk != D:
        raise ValueError(f"k must have head dim {D} like q {_shape(q)}, got k {_shape(k)}")
    return B, Hq, Hkv, N, M


def check_logit_range(q: torch.Tensor, k: torch.Tensor, scale: float) -> None:
    """Check that softmax logits ``scale · q·k`` stay within the accumulation dtype's range.

    Softmax is not scale invariant and its logits are formed in float32
    (float64 for float64 inputs), some kernels as q·k before the scale: beyond
    ~3e38 they overflow and the output is NaN (q and k of 1e20 did that, with
    scale 1e-30 too). The bound ``max(scale, 1) · D · max|q| · max|k|`` must
    stay below 2^-8 of the largest float (one max-reduction of q and of k;
    skipped with ``KERNELSKETCH_CHECK_FINITE=0``, like the finiteness pass).
    """
    if not CHECK_FINITE:
        return
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    # max |x| from one min/max pass (6x faster on CPU than vector_norm(ord=inf)).
    q_max, k_max = (max(-float(lo), float(hi)) for lo, hi in (torch.aminmax(x.detach())
                                                             for x in (q, k)))
    if q_max == 0 or k_max == 0:
        return
    log_limit = math.log(torch.finfo(acc).max) - 8 * math.log(2)
    log_bound = (max(math.log(scale), 0.0) + math.log(q.shape[-1]) + math.log(q_max)
                 + math.log(k_max))
    if log_bound > log_limit:
        raise ValueError(
            f"q and k must keep q·k and the logits scale·q·k within "
            f"{str(acc).replace('torch.', '')}'s "
            f"range (below {math.exp(log_limit):.3g}), got scale={scale:.3g}, head dim "
            f"{q.shape[-1]} and largest |entries| {q_max:.3g} (q) and {k_max:.3g} (k); "
            "rescale q and k or pass a smaller scale"
        )


def check_int(name: str, value: Any, *, min: int | None = None, max: int | None = None) -> int:
    """Check an integer parameter within [min, max]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if min is not None and value < min:
        raise ValueError(f"{name} must be >= {min}, got {value}")
    if max is not None and value > max:
        raise ValueError(f"{name} must be <= {max}, got {value}")
    return value


def check_float(
    name: str,
    value: Any,
    *,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
) -> float:
    """Check a finite real parameter within [min, max] (or (min, max] if min_exclusive)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if min is not None and (value < min or (min_exclusive and value == min)):
        op = ">" if min_exclusive else ">="
        raise ValueError(f"{name} must be {op} {min}, got {value}")
    if max is not None and value > max:
        raise ValueError(f"{name} must be <= {max}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Check that ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_generator(generator: Any, device: torch.device | None = None) -> None:
    """Check an optional torch.Generator (on the inputs' device when one is given)."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if device is not None and generator.device.type != torch.device(device).type:
        raise ValueError(
            f"generator must be on the inputs' device type {torch.device(device).type}, "
            f"got {generator.device}"
        )


def check_random_state(random_state: Any, name: str = "random_state") -> np.random.RandomState:
    """Turn a scikit-learn-style ``random_state`` into a ``numpy.random.RandomState``.

    scikit-learn's meaning (``sklearn.utils.check_random_state``), without
    importing scikit-learn: ``None`` gives numpy's global RandomState singleton
    (seeded by ``np.random.seed``), an int in ``[0, 2**32)`` a new
    ``RandomState(int)``, and a ``RandomState`` is returned as is (its state
    advances as it is used). Anything else, ``numpy.random.Generator``
    included, raises ``TypeError`` naming the argument.
    """
    if random_state is None:
        return np.random.mtrand._rand
    if isinstance(random_state, np.random.RandomState):
        return random_state
    if isinstance(random_state, (int, np.integer)) and not isinstance(
        random_state, (bool, np.bool_)
    ):
        if not 0 <= int(random_state) < 2**32:
            raise ValueError(f"{name} must be in [0, 2**32 - 1] as an int, got {random_state}")
        return np.random.RandomState(int(random_state))
    hint = (
        "; pass an int seed or np.random.RandomState(seed) instead"
        if isinstance(random_state, np.random.Generator)
        else ""
    )
    raise TypeError(
        f"{name} must be None, an int or a numpy.random.RandomState (scikit-learn's "
        f"meaning), got {type(random_state).__name__}{hint}"
    )


def available_memory() -> int:
    """Bytes of physical memory that may still be allocated (MemAvailable, else total RAM)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def check_allocation(nbytes: float, what: str, hint: str = "") -> None:
    """Raise ``ValueError`` before allocating ``nbytes`` that the machine cannot hold.

    ``what`` names the array and the arguments that size it, e.g.
    ``"the [d_in, d_out] = [10, 10**9] sketch matrix"``.
    """
    available = available_memory()
    if nbytes > available:
        raise ValueError(
            f"{what} needs {nbytes / 2**30:.3g} GiB, more than the {available / 2**30:.3g} GiB of "
            f"memory available{'; ' + hint if hint else ''}"
        )
