"""xai_feedback: interpretability inside the training loop of PyTorch vision models."""

from xai_feedback import errors
from xai_feedback.errors import *  # noqa: F403 (the package's names are its error classes)

__version__ = "0.2.0"

__all__ = ["__version__"]
__all__ += errors.__all__
