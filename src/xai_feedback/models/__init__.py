"""Reference models, ready for the CAM hooks, the penalties and the evaluators."""

from xai_feedback.models.attention import (
    CBAM,
    WARN,
    AttentionModel,
    ChannelAttention,
    ResidualAttentionNet,
    SimpleCNN,
    SpatialAttention,
)
from xai_feedback.models.gapnet import ConvBlock, GAPNet

__all__ = [
    "CBAM",
    "WARN",
    "AttentionModel",
    "ChannelAttention",
    "ConvBlock",
    "GAPNet",
    "ResidualAttentionNet",
    "SimpleCNN",
    "SpatialAttention",
]
