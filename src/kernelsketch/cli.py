"""Command line: ``kernelsketch demo``, ``kernelsketch bench attention|gpu ...``, ``kernelsketch eval-lm ...``.

The subcommands' own parsers share the argument types of :mod:`kernelsketch._args`.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from ._args import check_out_dir


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
