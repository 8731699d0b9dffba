"""Command line: ``kernelsketch demo``, ``kernelsketch bench attention|gpu ...``, ``kernelsketch eval-lm ...``.

The argument types below are shared by the subcommands' parsers
(:mod:`kernelsketch.bench.attention`, :mod:`kernelsketch.eval.lm`): a bad value
is an argparse error (usage, message naming the option, exit status 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from . import __version__


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="kernelsketch", description="kernelsketch command line")
    parser.add_argument("--version", action="version", version=f"kernelsketch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="every registered attention method on a built-in default (CPU)",
                          description="every registered attention method against exact attention "
                                      "on a built-in default (CPU), with a plot")
    demo.add_argument("--out-dir", default="results/demo", help="where the tables and the plot go")
    bench = sub.add_parser("bench", help="benchmarks: kernelsketch bench attention --help")
    families = bench.add_subparsers(dest="family", required=True)
    # The family's own parser reads the remaining arguments (and its --help).
    families.add_parser("attention", add_help=False,
                        help="every attention method against exact SDPA in the same run")
    families.add_parser("gpu", add_help=False,
                        help="on a CUDA machine: the Triton kernel tests, then every method "
                             "against SDPA cuDNN / flash at 4k-131k")
    sub.add_parser("eval-lm", help="perplexity of SmolLM2 on real text with patched layers "
                                   "(kernelsketch eval-lm --help)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        if rest:
            demo.error(f"unrecognized arguments: {' '.join(rest)}")
        out_dir = check_out_dir(demo, args.out_dir)
        from .demo import main as demo_main

        return demo_main(out_dir=str(out_dir))
    if args.command == "eval-lm":
        from .eval.lm import main as eval_main

        return eval_main(rest)
    if args.family == "gpu":
        from .bench.gpu import main as gpu_main

        return gpu_main(rest)
    from .bench.attention import main as bench_main

    return bench_main(rest)


if __name__ == "__main__":
    sys.exit(main())
