"""Reference models (CNNs, a small ViT) for the CAM hooks; pretrained weights, fine-tuning.

The reference models serve the CAM hooks, the penalties and the evaluators;
:mod:`xai_feedback.models.pretrained` loads weights from a file and prepares a pretrained
classifier for fine-tuning.
"""

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
from xai_feedback.models.pretrained import freeze_batchnorm, load_weights, replace_head
from xai_feedback.models.resnet import BasicBlock, SmallResNet
from xai_feedback.models.simple import SimpleConvNet
from xai_feedback.models.vit import TinyViT, TokenGrid

__all__ = [
    "CBAM",
    "WARN",
    "AttentionModel",
    "BasicBlock",
    "ChannelAttention",
    "ConvBlock",
    "GAPNet",
    "ResidualAttentionNet",
    "SimpleCNN",
    "SimpleConvNet",
    "SmallResNet",
    "SpatialAttention",
    "TinyViT",
    "TokenGrid",
    "freeze_batchnorm",
    "load_weights",
    "replace_head",
]
