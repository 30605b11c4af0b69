"""Benchmarks reachable as ``xai-feedback bench NAME`` (scripts in ``benchmarks/`` call these)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["BENCHMARKS"]


def _decoy(argv: Sequence[str]) -> int:
    from xai_feedback.bench.decoy import main

    return main(argv)


def _proxy(argv: Sequence[str]) -> int:
    from xai_feedback.bench.proxy import main

    return main(argv)


def _pcace(argv: Sequence[str]) -> int:
    from xai_feedback.bench.pcace import main

    return main(argv)


def _roar(argv: Sequence[str]) -> int:
    from xai_feedback.bench.faithfulness import main

    return main(argv)


def _attention(argv: Sequence[str]) -> int:
    from xai_feedback.bench.attention import main

    return main(argv)


BENCHMARKS: dict[str, Callable[[Sequence[str]], int]] = {
    "decoy": _decoy,
    "proxy": _proxy,
    "pcace": _pcace,
    "roar": _roar,
    "attention": _attention,
}
"""Benchmark name -> ``main(argv) -> exit code``."""
