"""Progress bars for every long loop, silenced everywhere by one flag.

Set the environment variable ``XAI_FEEDBACK_PROGRESS=0`` to silence every bar of the library
and its benchmarks (sweeps, training helpers, benchmarks), whatever their ``progress=``
arguments say; any other value, or none, leaves each call's own choice.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["ENV_FLAG", "progress_bar", "progress_enabled"]

ENV_FLAG = "XAI_FEEDBACK_PROGRESS"


def progress_enabled(requested: bool) -> bool:
    """``requested``, unless ``XAI_FEEDBACK_PROGRESS=0`` silences every bar."""
    return bool(requested) and os.environ.get(ENV_FLAG, "1").strip() != "0"


def progress_bar(*, total: int, desc: str, enabled: bool, leave: bool = True) -> Any:
    """A tqdm bar that refreshes rarely in logs and smoothly in a terminal."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        disable=not progress_enabled(enabled),
        leave=leave,
        mininterval=0.1 if sys.stderr.isatty() else 5.0,
    )
