"""``replace_head`` finds the layer that produces the logits of real torchvision and timm models.

Built without weights. The reference is each architecture's own source: the module whose
output is the logits (SqueezeNet: the 1x1 conv ``classifier.1`` before the global pooling;
MobileNetV3, EfficientNet and RegNet hold squeeze-excitation blocks in their features).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import timm
import torch
import torchvision.models as tvm
from torch import nn

from xai_feedback.layers import find_classifier, find_head
from xai_feedback.models import replace_head

CASES: dict[str, tuple[Callable[[], nn.Module], str, int]] = {
    "resnet18": (lambda: tvm.resnet18(), "fc", 64),
    "mobilenet_v2": (lambda: tvm.mobilenet_v2(), "classifier.1", 64),
    "mobilenet_v3_small": (lambda: tvm.mobilenet_v3_small(), "classifier.3", 64),
    "squeezenet1_0": (lambda: tvm.squeezenet1_0(), "classifier.1", 64),
    "squeezenet1_1": (lambda: tvm.squeezenet1_1(), "classifier.1", 64),
    "efficientnet_b0": (lambda: tvm.efficientnet_b0(), "classifier.1", 64),
    "mnasnet0_5": (lambda: tvm.mnasnet0_5(), "classifier.1", 64),
    "shufflenet_v2_x0_5": (lambda: tvm.shufflenet_v2_x0_5(), "fc", 64),
    "densenet121": (lambda: tvm.densenet121(), "classifier", 64),
    "regnet_y_400mf": (lambda: tvm.regnet_y_400mf(), "fc", 64),
    "convnext_tiny": (lambda: tvm.convnext_tiny(), "classifier.2", 64),
    "googlenet": (lambda: tvm.googlenet(aux_logits=False, init_weights=False), "fc", 64),
    "swin_t": (lambda: tvm.swin_t(), "head", 64),
    "vit_b_16": (lambda: tvm.vit_b_16(), "heads.head", 224),
    "timm_mobilenetv3": (
        lambda: timm.create_model("mobilenetv3_small_050", pretrained=False),
        "classifier",
        64,
    ),
    "timm_efficientnet_b0": (
        lambda: timm.create_model("efficientnet_b0", pretrained=False),
        "classifier",
        64,
    ),
    "timm_vit_tiny": (
        lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False),
        "head",
        224,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_replace_head_on_real_models(name: str) -> None:
    build, head, size = CASES[name]
    torch.manual_seed(0)
    model = build().eval()
    assert find_classifier(model).name == head
    old = model.get_submodule(head)
    if isinstance(old, nn.Linear):
        assert find_head(model).name == head  # CAM's linear head: the same layer
    others = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(head + ".")}
    replace_head(model, 7, generator=torch.Generator().manual_seed(0))
    new = model.get_submodule(head)
    kind = nn.Linear if isinstance(old, nn.Linear) else nn.Conv2d  # timm's Linear -> nn.Linear
    assert isinstance(old, kind) and type(new) is kind and new is not old
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in others.items())
    with torch.no_grad():
        out = model(torch.rand(1, 3, size, size))
    assert out.shape == (1, 7)
