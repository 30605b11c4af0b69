"""A small from-scratch ResNet, CAM-ready: torchvision's BasicBlock, GAP, one linear layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xai_feedback._checks import check_int, check_model_input, check_shape, check_sizes
from xai_feedback.errors import RangeError
from xai_feedback.models.gapnet import init_weights

__all__ = ["BasicBlock", "SmallResNet"]


class BasicBlock(nn.Module):
    r"""torchvision's ResNet ``BasicBlock`` (He et al. 2016).

    .. math:: y = \mathrm{relu}(\mathrm{bn}_2(\mathrm{conv}_2(\mathrm{relu}(\mathrm{bn}_1(
              \mathrm{conv}_1(x))))) + s(x))

    with :math:`s` the identity, or a strided 1x1 conv + BN when the shape changes.

    Args:
        inplanes: Input channels.
        planes: Output channels.
        stride: Stride of the first 3x3 conv (and of the shortcut).

    Shape:
        - x: :math:`(B, C_{in}, H, W)`
        - output: :math:`(B, C_{out}, \lceil H / s \rceil, \lceil W / s \rceil)`

    Example:
        >>> block = BasicBlock(4, 8, stride=2)
        >>> tuple(block(torch.zeros(2, 4, 9, 9)).shape)
        (2, 8, 5, 5)
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output (see the class docstring)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = self.relu(out + identity)
        return result


class SmallResNet(nn.Module):
    r"""A small ResNet to train from scratch, with a GAP + linear head (exact CAM).

    A 3x3 stem (stride ``stem_stride``, no 7x7 conv, no max-pool; the CIFAR adaptation of
    He et al. 2016), three stages of ``blocks`` :class:`BasicBlock` with ``width``,
    ``2 width``, ``4 width`` channels and strides ``strides``, global average pooling and
    ``fc``. ``layer3`` feeds the pooling: the CAM layer, at :math:`H / (s_0 s_1 s_2 s_3)`.
    The defaults give an 8x8 map at 64 px (16 x 16 at 28 px with ``stem_stride=1``,
    ``strides=(1, 2, 1)``: a 14 x 14 map, as :class:`~xai_feedback.models.GAPNet`'s).

    Args:
        in_channels: Image channels (3 for RGB).
        num_classes: Outputs of ``fc``.
        width: Channels of the first stage.
        blocks: BasicBlocks per stage.
        stem_stride: Stride of the stem conv (1 or 2).
        strides: Strides of the three stages.
        generator: Initialize the weights from it (He-normal convs, reset BatchNorm,
            uniform linear); PyTorch's default initialization when ``None``.

    Raises:
        RangeError: A size below 1, or not three strides.

    Shape:
        - x: :math:`(B, C_{in}, H, W)`
        - output: :math:`(B, K)`

    Example:
        >>> model = SmallResNet(3, 10, width=4, generator=torch.Generator().manual_seed(0))
        >>> tuple(model(torch.zeros(2, 3, 64, 64)).shape)
        (2, 10)
        >>> from xai_feedback.hooks import CAMHook
        >>> with CAMHook(model) as hook:  # the CAM layer, layer3: 8 x 8 at 64 px
        ...     maps = hook.maps(model(torch.zeros(2, 3, 64, 64)), torch.tensor([0, 1]))
        >>> tuple(maps.shape)
        (2, 8, 8)
    """

    cam_layer = "layer3"

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        width: int = 16,
        blocks: int = 1,
        stem_stride: int = 2,
        strides: Sequence[int] = (1, 2, 2),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_sizes(
            in_channels=in_channels,
            num_classes=num_classes,
            width=width,
            blocks=blocks,
            stem_stride=stem_stride,
        )
        strides = tuple(strides)
        if len(strides) != 3:
            raise RangeError(f"`strides` must hold three strides, got {strides!r}.")
        for s in strides:
            check_int(s, "strides", minimum=1)
        self.in_channels = in_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=False),
        )
        planes = [width, 2 * width, 4 * width]
        inplanes = width
        stages = []
        for p, s in zip(planes, strides, strict=True):
            layers = [BasicBlock(inplanes, p, s)] + [BasicBlock(p, p) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            inplanes = p
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        if generator is not None:
            init_weights(self, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` of images ``(B, C, H, W)``."""
        check_shape(x, "B C H W", "x", C=self.in_channels)
        check_model_input(self, x)
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        out: torch.Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return out
