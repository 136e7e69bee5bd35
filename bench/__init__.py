"""Benchmarks: runnable scripts (``python -m bench.<name>``), not tests; see bench/README.md."""
