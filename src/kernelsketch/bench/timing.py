"""The one timer of every benchmark: warm-up, repetitions, median, on a named clock.

Two clocks:

* ``"wall"`` — elapsed time (``time.perf_counter``); on a CUDA device the
  device is synchronised before the clock is read, so the time covers the
  queued kernels;
* ``"process"`` — CPU time of this process (``time.process_time``), CPU work
  only. On a machine shared with other jobs it counts the work itself rather
  than the time the scheduler gave to others (use one torch / BLAS thread).

:func:`time_ms` repeats a call and returns the median; :class:`Stopwatch`
times one block (a fit, a training run) on the same clocks.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["CLOCKS", "Stopwatch", "time_ms"]

CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def _device(device) -> torch.device | None:
    return None if device is None else torch.device(device)


def _check(clock: str, device: torch.device | None) -> Callable[[], float]:
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    if clock == "process" and device is not None and device.type != "cpu":
        raise ValueError(f"clock='process' times CPU work only, got device {device}")
    return CLOCKS[clock]


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device | str | None = None, *,
            warmup: int = 1, reps: int = 5, budget_s: float = 20.0, clock: str = "wall") -> float:
    """Median time of ``fn()`` in milliseconds over ``reps`` calls after ``warmup`` calls.

    Parameters
    ----------
    fn : the call to time (no arguments).
    device : where ``fn`` runs (``None``: CPU); a CUDA device is synchronised
        after the warm-up and after every call, before the clock is read.
    warmup : untimed calls first (compilation, caches, autotuning).
    reps : timed calls; fewer if their total wall time passes ``budget_s``.
    clock : ``"wall"`` or ``"process"`` (CPU time of this process, CPU only).

    Returns
    -------
    float : the median of the timed calls, in milliseconds.
    """
    device = _device(device)
    now = _check(clock, device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = now()
        fn()
        _sync(device)
        times.append((now() - t0) * 1e3)
        if time.perf_counter() - start > budget_s:
            break
    return statistics.median(times)


class Stopwatch:
    """Time one block on a clock of :data:`CLOCKS` (no repetition, no warm-up).

    ``with Stopwatch("process") as sw: ...`` then ``sw.seconds``; or
    ``sw = Stopwatch().start()`` and ``sw.elapsed()`` while it runs (a
    training loop's progress). A CUDA ``device`` is synchronised before each
    reading.
    """

    def __init__(self, clock: str = "wall", device: torch.device | str | None = None) -> None:
        self.device = _device(device)
        self._now = _check(clock, self.device)
        self.clock = clock
        self.seconds: float | None = None
        self._t0: float | None = None

    def start(self) -> Self:
        _sync(self.device)
        self._t0 = self._now()
        self.seconds = None
        return self

    def elapsed(self) -> float:
        """Seconds since :meth:`start` (the watch keeps running)."""
        if self._t0 is None:
            raise RuntimeError("Stopwatch.elapsed() before start()")
        _sync(self.device)
        return self._now() - self._t0

    def stop(self) -> float:
        """Stop; the elapsed seconds are returned and kept in :attr:`seconds`."""
        self.seconds = self.elapsed()
        return self.seconds

    @property
    def ms(self) -> float | None:
        return None if self.seconds is None else self.seconds * 1e3

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
