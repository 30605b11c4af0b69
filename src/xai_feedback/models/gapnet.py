"""A small CAM-ready CNN: convolutional blocks, global average pooling, one linear layer."""

from __future__ import annotations

import math

import torch
from torch import nn

from xai_feedback._checks import check_int, check_model_input, check_shape, check_sizes
from xai_feedback.errors import ShapeError

__all__ = ["ConvBlock", "GAPNet"]


def init_weights(model: nn.Module, generator: torch.Generator) -> None:
    r"""Re-initialize ``model``'s weights from ``generator``.

    He-normal convolutions (biases 0), BatchNorm reset, linear weights uniform in
    :math:`\pm 1/\sqrt{\text{fan-in}}` (biases 0).
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(
                    module.weight, mode="fan_out", nonlinearity="relu", generator=generator
                )
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.in_features)
                nn.init.uniform_(module.weight, -bound, bound, generator=generator)
                nn.init.zeros_(module.bias)


def check_training_batch(
    model: nn.Module, images: torch.Tensor, halvings: int, *, ceil: bool = False
) -> None:
    """Refuse one image whose smallest feature map is 1x1 in training mode (metadata only).

    BatchNorm then sees one value per channel and cannot normalize it; the error names the
    input and the way out instead of PyTorch's message from deep inside the network.
    """
    if not model.training or images.shape[0] != 1:
        return
    h, w = int(images.shape[-2]), int(images.shape[-1])
    for _ in range(halvings):
        h, w = ((h + 1) // 2, (w + 1) // 2) if ceil else (h // 2, w // 2)
    if h * w == 1:
        raise ShapeError(
            f"`images` of shape {tuple(images.shape)} give one value per channel at the "
            f"smallest feature map (1x1) in training mode, where BatchNorm needs more: "
            f"use a batch of at least 2, larger images, or model.eval()."
        )


class ConvBlock(nn.Sequential):
    """``Conv2d(3x3, no bias) -> BatchNorm2d -> ReLU``, keeping the spatial size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=False),
        )


class GAPNet(nn.Module):
    r"""CNN with a global-average-pool + linear head, so CAM is exact (Zhou et al. 2016).

    ``depth`` blocks of :class:`ConvBlock`; block ``i`` has ``width * 2**min(i, 2)``
    channels and the first ``pools`` blocks are followed by 2x2 max-pooling, so a 28x28 input
    gives a 14x14 map at ``features`` (``pools=1``, the default) or a 7x7 map (``pools=2``).
    The default matters for CAM feedback: every cell of a 7x7 map has a receptive field of
    26 px that reaches the image border, so a penalty on peripheral cells can be dodged by
    moving a border confound's evidence inward; the 14x14 map's central cells (receptive field
    16 px) cannot see the border (measured by ``xai-feedback bench decoy``). The head is
    ``logits = W mean_{h,w} A + b``, hence

    .. math:: y_k = \frac{1}{hw} \sum_{h,w} \mathrm{CAM}_k(h, w) + b_k,
              \qquad \mathrm{CAM}_k = \sum_c W_{kc} A_c .

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of classes ``K``.
        width: Channels of the first block (a width multiplier).
        depth: Number of convolutional blocks (>= 2).
        pools: Number of 2x2 max-poolings (after the first ``pools`` blocks), 0 to ``depth``.
        generator: Random generator for the initial weights (reproducible without
            touching the global seed); ``None`` uses PyTorch's default initialization.

    Attributes:
        features: The convolutional trunk; its output is the CAM layer (``cam_layer``).
        pool: Global average pooling.
        classifier: The linear head whose weights give the CAM.

    Shape:
        - Input: :math:`(B, C_{in}, H, W)` with ``H, W >= 4``
        - Output: :math:`(B, K)` logits

    Example:
        >>> model = GAPNet(width=8, generator=torch.Generator().manual_seed(0))
        >>> model(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> model.features(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 32, 14, 14])
    """

    cam_layer = "features"
    """Dotted name of the layer whose output the CAM hooks use by default."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 16,
        depth: int = 4,
        pools: int = 1,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_sizes(in_channels=in_channels, width=width)
        check_int(num_classes, "num_classes", minimum=2)
        check_int(depth, "depth", minimum=2)
        check_int(pools, "pools", minimum=0, maximum=depth)
        self.pools = pools
        self.in_channels = in_channels
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(depth):
            out = width * 2 ** min(i, 2)
            layers.append(ConvBlock(channels, out))
            if i < pools:
                layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        if generator is not None:
            self.reset_parameters(generator)

    @property
    def num_features(self) -> int:
        """Channels of the CAM layer."""
        return self.classifier.in_features

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Re-initialize every weight from ``generator`` (see :func:`init_weights`)."""
        init_weights(self, generator)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images."""
        check_shape(images, "B C H W", "images", C=self.in_channels)
        check_model_input(self, images)  # dtype and device: metadata only, no synchronisation
        side = 2**self.pools
        if images.shape[-1] < side or images.shape[-2] < side:
            raise ShapeError(
                f"`images` must be at least {side}x{side} ({self.pools} 2x2 poolings), "
                f"got shape {tuple(images.shape)}."
            )
        check_training_batch(self, images, self.pools)
        logits: torch.Tensor = self.classifier(torch.flatten(self.pool(self.features(images)), 1))
        return logits
