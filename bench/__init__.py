"""Benchmarks runnable as ``python -m bench.<name>``; each module has ``run(...) -> dict``."""
