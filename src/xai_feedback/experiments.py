"""Deprecated alias of :mod:`xai_feedback.demo` (kept for one release).

``xai_feedback.experiments`` held the confounded-digits runner that the demo and the benchmarks
shared; it now lives in :mod:`xai_feedback.demo` and the benchmarks live outside the package, in
the repository's ``benchmarks/`` folder.
"""

from __future__ import annotations

import warnings

from xai_feedback.demo import ConfoundRun, ConfoundSetup, run_confounded

__all__ = ["ConfoundRun", "ConfoundSetup", "run_confounded"]

warnings.warn(
    "xai_feedback.experiments is deprecated and will be removed in the next release; "
    "import ConfoundSetup, ConfoundRun and run_confounded from xai_feedback.demo",
    DeprecationWarning,
    stacklevel=2,
)
