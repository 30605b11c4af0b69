"""Reference models, ready for the CAM hooks, the penalties and the evaluators."""

from xai_feedback.models.gapnet import ConvBlock, GAPNet

__all__ = ["ConvBlock", "GAPNet"]
