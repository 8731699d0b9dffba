"""Benchmark runners shared by ``benchmarks/`` scripts and the ``kernelsketch`` CLI.

* :mod:`kernelsketch.bench.timing` — the one timer every benchmark uses
  (``time_ms``: warm-up, repetitions, median; ``Stopwatch``: one block), on the
  wall or the process-CPU clock.
* :mod:`kernelsketch.bench.attention` — ``kernelsketch bench attention``: every
  attention method against exact SDPA in the same run.
"""
