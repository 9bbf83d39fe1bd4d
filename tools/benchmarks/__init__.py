"""Benchmarks and worked examples of seg2 (not part of the installed library): run by
``tools/benchmark.py`` and ``tools/nuclei_example.py``, imported by tests as ``benchmarks``."""
