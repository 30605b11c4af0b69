"""Deprecated alias of :mod:`xai_feedback.pcace` (renamed in 0.2.0; removed in 0.3.0)."""

import warnings

from xai_feedback.pcace import *  # noqa: F403
from xai_feedback.pcace import __all__  # noqa: F401

warnings.warn(
    "xai_feedback.ranking is deprecated: import from xai_feedback.pcace.",
    DeprecationWarning,
    stacklevel=2,
)
