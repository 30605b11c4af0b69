"""A torchvision ResNet-18 fine-tuned with frozen BatchNorms (``model.train()`` then every
``bn.eval()``, the usual recipe) keeps them frozen through every public entry that takes a
model: each module's own flag comes back and no running statistic moves."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from tests.test_modes import ENTRIES, check_entry_keeps_flags
from xai_feedback.data import ImageDataset


def _frozen_resnet() -> tuple[nn.Module, ImageDataset]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(16, 3, 64, 64, generator=g)
    with torch.no_grad():
        model.train()(images)  # running statistics of its own
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    masks = torch.zeros(16, 64, 64, dtype=torch.bool)
    masks[:, :8] = True
    return model, ImageDataset(images, torch.arange(16) % 4, masks)


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_resnet_frozen_batchnorms_stay_frozen(entry: str) -> None:
    model, data = _frozen_resnet()
    assert sum(not m.training for m in model.modules()) == 20  # the 20 BatchNorms of resnet18
    check_entry_keeps_flags(model, data, "layer4", entry)
