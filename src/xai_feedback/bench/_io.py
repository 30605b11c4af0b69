"""Result files (atomic writes from :mod:`xai_feedback._io`) and summaries for the benchmarks."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from xai_feedback._io import read_json, write_json_atomic

__all__ = ["mean_std", "read_json", "write_json_atomic"]


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``"mean ± std"`` of ``values`` (sample std; 0 for one value, ``"-"`` for none)."""
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"
