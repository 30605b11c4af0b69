"""Deprecated alias of :mod:`xai_feedback.proxy` (renamed in 0.2.0; removed in 0.3.0)."""

import warnings

from xai_feedback.proxy import *  # noqa: F403
from xai_feedback.proxy import __all__  # noqa: F401

warnings.warn(
    "xai_feedback.transforms is deprecated: import from xai_feedback.proxy "
    "(explain() now lives in xai_feedback.attribution).",
    DeprecationWarning,
    stacklevel=2,
)
