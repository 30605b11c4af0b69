"""Exceptions raised by xai_feedback, and the one rule for which class each failure raises.

Every error derives from :class:`XAIFeedbackError` *and* from the built-in exception a
user would expect (``ValueError``, ``TypeError``, ``RuntimeError``, ``FileNotFoundError``),
so both ``except XAIFeedbackError`` and ``except ValueError`` work. Every message names the
argument, what was expected and what was received.

========================================================  ==========================
Failure                                                   Class (builtin)
========================================================  ==========================
wrong Python type, or a tensor of the wrong dtype         :class:`DTypeError` (TypeError)
wrong rank or size, sizes that disagree, an empty batch   :class:`ShapeError` (ValueError)
a required input absent (``None`` where it is needed)     :class:`MissingInputError` (ValueError)
a value out of range, not finite, not one of the choices  :class:`RangeError` (ValueError)
a layer that does not exist or does not give what is      :class:`LayerError` (ValueError)
needed (not 4-D, does not feed the head)
a hook used outside its block, or capturing nothing       :class:`HookError` (RuntimeError)
a result store that cannot be used as asked (settings     :class:`StoreError` (RuntimeError)
that differ, a locked or corrupt record)
a weights file that cannot serve the model (a checksum    :class:`WeightsError` (ValueError)
that differs, keys or shapes that differ, not a state
dict); a weights file that does not exist                 :class:`WeightsNotFoundError`
                                                          (also FileNotFoundError)
a data file or folder that is not there                   :class:`MissingDataError`
                                                          (FileNotFoundError)
a data file that cannot be read (corrupt, truncated,      :class:`DataError` (ValueError)
wrong magic number, not an image), an empty data folder
========================================================  ==========================

Runtime contracts are never ``assert`` statements (they vanish under ``python -O``).
"""

from __future__ import annotations

__all__ = [
    "DTypeError",
    "DataError",
    "HookError",
    "LayerError",
    "MissingDataError",
    "MissingInputError",
    "RangeError",
    "ShapeError",
    "StoreError",
    "WeightsError",
    "WeightsNotFoundError",
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


class MissingInputError(XAIFeedbackError, ValueError):
    """A required input is absent (``None`` where the computation needs it)."""


class LayerError(XAIFeedbackError, ValueError):
    """A layer does not exist in the model or does not produce what is needed."""


class HookError(XAIFeedbackError, RuntimeError):
    """A hook was used outside its ``with`` block or captured nothing."""


class StoreError(XAIFeedbackError, RuntimeError):
    """A result store cannot be used as asked (foreign settings, a lock, a corrupt record)."""


class WeightsError(XAIFeedbackError, ValueError):
    """A weights file cannot serve the model (checksum, keys, shapes or content differ)."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """A weights file does not exist (also a ``FileNotFoundError``)."""


class DataError(XAIFeedbackError, ValueError):
    """A data file cannot be read as its format says (corrupt, truncated, not an image)."""


class MissingDataError(XAIFeedbackError, FileNotFoundError):
    """A data file or folder is not on disk (the message says how to get it)."""
