"""Exceptions raised by xai_feedback.

Every error derives from :class:`XAIFeedbackError` *and* from the built-in exception a
user would expect (``ValueError``, ``TypeError``, ``RuntimeError``), so both
``except XAIFeedbackError`` and ``except ValueError`` work.
"""

from __future__ import annotations

__all__ = [
    "DTypeError",
    "HookError",
    "LayerError",
    "RangeError",
    "ShapeError",
    "XAIFeedbackError",
]


class XAIFeedbackError(Exception):
    """Base class of every error raised on purpose by xai_feedback."""


class ShapeError(XAIFeedbackError, ValueError):
    """A tensor has the wrong rank or size (the message names the argument and the pattern)."""


class DTypeError(XAIFeedbackError, TypeError):
    """A tensor or value has the wrong type or dtype."""


class RangeError(XAIFeedbackError, ValueError):
    """A value lies outside its allowed range, is not finite, or is not one of the choices."""


class LayerError(XAIFeedbackError, ValueError):
    """A layer does not exist in the model or does not produce what is needed."""


class HookError(XAIFeedbackError, RuntimeError):
    """A hook was used outside its ``with`` block or captured nothing."""
