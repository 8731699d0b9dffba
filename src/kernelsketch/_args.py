"""argparse types shared by the command line's parsers (:mod:`kernelsketch.cli`,
:mod:`kernelsketch.bench.attention`, :mod:`kernelsketch.bench.gpu`, :mod:`kernelsketch.eval.lm`):
a bad value is an argparse error (usage, message naming the option, exit status 2).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


def int_arg(*, min: int | None = None, max: int | None = None) -> Callable[[str], int]:
    """argparse type: an int within [min, max]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
        if (min is not None and value < min) or (max is not None and value > max):
            bounds = f">= {min}" if max is None else f"in [{min}, {max}]"
            raise argparse.ArgumentTypeError(f"expected an int {bounds}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def int_list_arg(*, min: int | None = None, max: int | None = None) -> Callable[[str], list[int]]:
    """argparse type: comma-separated ints, each within [min, max]."""
    one = int_arg(min=min, max=max)

    def parse(text: str) -> list[int]:
        items = text.split(",")
        if not all(item.strip() for item in items):
            raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}")
        return [one(item) for item in items]

    parse.__name__ = "list of ints"
    return parse


def choice_list_arg(choices: Iterable[str]) -> Callable[[str], list[str]]:
    """argparse type: comma-separated names, each one of ``choices``."""
    choices = tuple(choices)

    def parse(text: str) -> list[str]:
        items = text.split(",")
        bad = [item for item in items if item not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated names from {', '.join(choices)}, got {text!r}")
        return items

    parse.__name__ = "list of names"
    return parse


def device_arg(text: str):
    """argparse type: a torch device that exists on this machine (``cpu``, ``cuda``, ``cuda:1``)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu or cuda, "
                                         f"got {text!r}") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)
    available = getattr(backend, "is_available", lambda: False)()
    count = getattr(backend, "device_count", lambda: 1)() if available else 0
    if not available or (device.index is not None and device.index >= count):
        raise argparse.ArgumentTypeError(f"device {text!r} is not available on this machine")
    return device


def check_out_dir(parser: argparse.ArgumentParser, path: str | os.PathLike) -> Path:
    """Create ``path`` and check that a file can be written there, else a parser error (exit 2)."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        parser.error(f"argument --out-dir: cannot write to {str(out)!r}: {exc.strerror or exc}")
    return out
