"""Benchmarks reachable as ``xai-feedback bench NAME`` (scripts in ``benchmarks/`` call these)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["BENCHMARKS"]

BENCHMARKS: dict[str, Callable[[Sequence[str]], int]] = {}
"""Benchmark name -> ``main(argv) -> exit code``."""
