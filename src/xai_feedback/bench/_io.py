"""Atomic, resumable result files for the benchmarks."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["mean_std", "read_json", "write_json_atomic"]


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``"mean ± std"`` of ``values`` (sample std; 0 for one value, ``"-"`` for none)."""
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """Return the JSON object at ``path``, or ``None`` if it does not exist."""
    if not path.exists():
        return None
    with path.open() as handle:
        data: dict[str, Any] = json.load(handle)
    return data
