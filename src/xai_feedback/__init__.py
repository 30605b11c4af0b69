"""xai_feedback: interpretability inside the training loop of PyTorch vision models."""

from xai_feedback.errors import (
    DataError,
    DTypeError,
    HookError,
    LayerError,
    MissingDataError,
    MissingInputError,
    RangeError,
    ShapeError,
    StoreError,
    WeightsError,
    WeightsNotFoundError,
    XAIFeedbackError,
)

__version__ = "0.2.0"

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
    "__version__",
]
