"""SimpleConvNet: the XIL typology's small CNN for (Fashion-)MNIST, a user's model without GAP.

Friedrich, Stammer, Schramowski and Kersting ("A typology for exploring the mitigation of
shortcut behaviour", *Nature Machine Intelligence* 2023) compare the explanatory interactive
learning methods on Decoy-MNIST and Decoy-FMNIST with this network (after the MNIST example
of PyTorch): two 5 x 5 convolutions with ReLU and 2 x 2 max-pooling, then two linear layers.
Its Grad-CAM layer is ``last_conv`` (an 8 x 8 map for 28 x 28 inputs). It has no global
average pooling before its classifier, so the exact CAM (``method="cam"``) does not apply;
Grad-CAM at ``last_conv`` does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from xai_feedback._checks import check_shape

__all__ = ["SimpleConvNet"]


class SimpleConvNet(nn.Module):
    r"""The typology's SimpleConvNet for 1 x 28 x 28 images.

    ``conv1`` (1 -> 20, 5 x 5) -> ReLU -> max-pool 2 -> ``last_conv`` (20 -> 50, 5 x 5) ->
    ReLU -> max-pool 2 -> flatten (800) -> ``fc1`` (800 -> 256) -> ReLU -> ``fc2``
    (256 -> ``num_classes``); the logits are returned (no softmax).

    Args:
        num_classes: Number of outputs (10 in the typology).
        generator: Random generator of the initial weights, drawn from PyTorch's default
            initialization of each layer (Kaiming-uniform, :math:`a = \sqrt 5`, biases
            uniform in :math:`\pm 1/\sqrt{\text{fan-in}}`); ``None``: the global generator.

    Shape:
        - input: :math:`(B, 1, 28, 28)`
        - output: :math:`(B, K)`

    Example:
        >>> model = SimpleConvNet(generator=torch.Generator().manual_seed(0))
        >>> model(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> sum(p.numel() for p in model.parameters())
        233196
    """

    def __init__(self, num_classes: int = 10, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.relu1 = nn.ReLU()
        self.max_pool1 = nn.MaxPool2d(2, 2)
        self.last_conv = nn.Conv2d(20, 50, 5, 1)
        self.relu2 = nn.ReLU()
        self.max_pool2 = nn.MaxPool2d(2, 2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(4 * 4 * 50, 256)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(256, num_classes)
        if generator is not None:
            for layer in (self.conv1, self.last_conv, self.fc1, self.fc2):
                _default_init(layer, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of ``x``."""
        check_shape(x, "B 1 28 28", "x")
        x = self.max_pool1(self.relu1(self.conv1(x)))
        x = self.max_pool2(self.relu2(self.last_conv(x)))
        x = self.relu3(self.fc1(self.flatten(x)))
        logits: torch.Tensor = self.fc2(x)
        return logits


def _default_init(layer: nn.Conv2d | nn.Linear, generator: torch.Generator) -> None:
    """PyTorch's default ``reset_parameters`` of a conv or linear layer, from ``generator``."""
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    if layer.bias is not None:
        fan_in = layer.weight[0].numel()
        bound = 1 / math.sqrt(fan_in)
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
