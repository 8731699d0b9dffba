"""Command line: ``kernelsketch demo``, ``kernelsketch bench attention ...``, ``kernelsketch eval-lm ...``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="kernelsketch", description="kernelsketch command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="every registered attention method on a built-in default (CPU)")
    demo.add_argument("--out-dir", default="results/demo")
    bench = sub.add_parser("bench", help="benchmarks: kernelsketch bench attention --help")
    families = bench.add_subparsers(dest="family", required=True)
    # The family's own parser reads the remaining arguments (and its --help).
    families.add_parser("attention", add_help=False,
                        help="every attention method against exact SDPA in the same run")
    sub.add_parser("eval-lm", help="perplexity of SmolLM2 on real text with patched layers "
                                   "(kernelsketch eval-lm --help)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from .demo import main as demo_main

        return demo_main(out_dir=args.out_dir)
    if args.command == "eval-lm":
        from .eval.lm import main as eval_main

        return eval_main(rest)
    from .bench.attention import main as bench_main

    return bench_main(rest)


if __name__ == "__main__":
    sys.exit(main())
