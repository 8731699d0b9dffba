"""Benchmark runners shared by ``benchmarks/`` scripts and the ``kernelsketch`` CLI."""
