"""xai_feedback: interpretability inside the training loop of PyTorch vision models."""

from xai_feedback.errors import (
    DTypeError,
    HookError,
    LayerError,
    RangeError,
    ShapeError,
    XAIFeedbackError,
)

__version__ = "0.1.0"

__all__ = [
    "DTypeError",
    "HookError",
    "LayerError",
    "RangeError",
    "ShapeError",
    "XAIFeedbackError",
    "__version__",
]
