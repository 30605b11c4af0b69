"""In-place operations after the hooked layer (ReLU(inplace=True), ``out += identity``,
``x.relu_()``) must not silently corrupt the maps: the maps are those of the layer's own
output (checked against an out-of-place twin of the model), or a clear XAIFeedbackError.
Maps are compared signed (``relu=False``): an in-place ReLU would otherwise hide in the zeros."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.integration._zoo import ZOO, images, model_of
from xai_feedback.errors import XAIFeedbackError
from xai_feedback.hooks import CAMHook

TARGET = torch.tensor([3, 7])


class Net(nn.Module):
    """conv -> bn (hooked) -> in-place op -> conv -> GAP -> linear."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU(inplace=mode == "module")
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.bn(self.conv(x))
        if self.mode == "module":
            b = self.act(a)  # nn.ReLU(inplace=True)
        elif self.mode == "method":
            b = a.relu_()
        elif self.mode == "add":
            a += 1.0  # `out += x`
            b = torch.relu(a)
        else:  # "none": the out-of-place reference
            b = torch.relu(a + 1.0) if self.mode == "none_add" else torch.relu(a)
        return self.fc(self.pool(self.conv2(b)).flatten(1))


def _reference(net: Net, x: torch.Tensor, method: str) -> torch.Tensor:
    # The same weights, every op out of place; A is bn's output.
    acts = net.bn(net.conv(x))
    b = torch.relu(acts + 1.0) if net.mode == "add" else torch.relu(acts)
    logits = net.fc(net.pool(net.conv2(b)).flatten(1))
    (grads,) = torch.autograd.grad(logits.gather(1, TARGET[:, None]).sum(), acts)
    if method == "grad_cam":
        return (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1).detach()
    return (grads * acts).sum(1).detach()


def _check(model: nn.Module, layer: str, x: torch.Tensor, want: torch.Tensor, method: str) -> None:
    try:
        with CAMHook(model, layer) as hook:
            logits = model(x)
            got = hook.maps(logits, TARGET, method=method, scale="paper", relu=False)
    except XAIFeedbackError as error:
        assert "in-place" in str(error).lower() or "inplace" in str(error).lower(), str(error)
        return
    scale = float(want.abs().max().clamp_min(1e-12))
    assert torch.allclose(got.detach(), want, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("method", ["grad_cam", "hires_cam"])
@pytest.mark.parametrize("mode", ["module", "method", "add"])
def test_inplace_after_the_hooked_layer(mode: str, method: str) -> None:
    torch.manual_seed(0)
    net = Net(mode).eval()
    with torch.no_grad():
        net.bn.running_mean.normal_()  # bn output of both signs: the ReLU matters
    x = torch.rand(2, 3, 12, 12)
    want = _reference(net, x, method)
    assert float(want.abs().max()) > 0
    _check(net, "bn", x, want, method)


def _resnet_block_reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of resnet18's ``layer4.1.bn2`` output (before ``out += identity``)."""
    h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    h = model.layer4[0](model.layer3(model.layer2(model.layer1(h))))
    block = model.layer4[1]
    acts = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(h)))))
    out = torch.relu(acts + h)
    logits = model.fc(torch.flatten(model.avgpool(out), 1))
    (grads,) = torch.autograd.grad(logits.gather(1, TARGET[:, None]).sum(), acts)
    return (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1).detach()


def test_resnet_bn2_is_followed_by_an_inplace_residual_add() -> None:
    # torchvision's BasicBlock does `out += identity` then ReLU(inplace=True) on bn2's output.
    arch = ZOO[0]
    model = copy.deepcopy(model_of(arch))
    x = images(arch)
    want = _resnet_block_reference(model, x)
    _check(model, "layer4.1.bn2", x, want, "grad_cam")


def test_resnet_inner_relu_inplace() -> None:
    # layer4.0.bn1 is followed by the block's ReLU(inplace=True).
    arch = ZOO[0]
    model = copy.deepcopy(model_of(arch))
    x = images(arch)
    h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    h = model.layer3(model.layer2(model.layer1(h)))
    block = model.layer4[0]
    acts = block.bn1(block.conv1(h))
    out = block.bn2(block.conv2(torch.relu(acts)))
    out = torch.relu(out + block.downsample(h))
    out = model.layer4[1](out)
    logits = model.fc(torch.flatten(model.avgpool(out), 1))
    (grads,) = torch.autograd.grad(logits.gather(1, TARGET[:, None]).sum(), acts)
    want = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1).detach()
    _check(model, "layer4.0.bn1", x, want, "grad_cam")
