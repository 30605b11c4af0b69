"""Random-init torchvision and timm models, each with a hand-written split into
``features(x) -> A`` (the spatial map that feeds the global pooling) and ``head(A) -> logits``.

The split is written from each architecture's own ``forward`` source, independently of
``xai_feedback``; ``model(x) == head(features(x))`` is checked by the tests, so a split that
drifts from the real model fails loudly instead of becoming a wrong reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

Split = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Arch:
    """One architecture of the zoo.

    Attributes:
        name: Test id.
        build: Builds the random-init model (10 classes).
        layer: The dotted name the default layer must resolve to (``None``: not asserted,
            only the activations are compared).
        features: ``(model, x) -> A``, the tensor that feeds the global average pooling.
        head: ``(model, A) -> logits``.
        gap_linear: The head is global average pooling followed by one linear layer (in
            eval mode), so ``method="cam"`` is defined.
        size: Input side in pixels.
    """

    name: str
    build: Callable[[], nn.Module]
    layer: str | None
    features: Split
    head: Split
    gap_linear: bool
    size: int = 96


def _resnet_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def _pool_fc(m: nn.Module, a: torch.Tensor) -> torch.Tensor:
    return m.fc(torch.flatten(m.avgpool(a), 1))


def _pool_classifier(m: nn.Module, a: torch.Tensor) -> torch.Tensor:
    return m.classifier(torch.flatten(m.avgpool(a), 1))


def _features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.features(x)


def _densenet_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # DenseNet.forward: features -> F.relu -> adaptive_avg_pool2d -> classifier; the map
    # that is pooled is the relu output.
    return F.relu(m.features(x))


def _functional_pool_classifier(m: nn.Module, a: torch.Tensor) -> torch.Tensor:
    return m.classifier(torch.flatten(F.adaptive_avg_pool2d(a, 1), 1))


def _convnext_head(m: nn.Module, a: torch.Tensor) -> torch.Tensor:
    return m.classifier(m.avgpool(a))  # classifier = LayerNorm2d, Flatten, Linear


def _regnet_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.trunk_output(m.stem(x))


def _timm_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.forward_features(x)


def _timm_head(m: nn.Module, a: torch.Tensor) -> torch.Tensor:
    return m.forward_head(a)


def _tv(name: str) -> Callable[[], nn.Module]:
    return lambda: torchvision.models.get_model(name, weights=None, num_classes=10)


def _timm(name: str) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=10)


TORCHVISION = [
    Arch("resnet18", _tv("resnet18"), "layer4", _resnet_features, _pool_fc, True),
    Arch("resnet50", _tv("resnet50"), "layer4", _resnet_features, _pool_fc, True),
    Arch("vgg11_bn", _tv("vgg11_bn"), "features", _features, _pool_classifier, False),
    Arch(
        "densenet121",
        _tv("densenet121"),
        "features",
        _densenet_features,
        _functional_pool_classifier,
        True,
    ),
    Arch(
        "mobilenet_v2",
        _tv("mobilenet_v2"),
        "features",
        _features,
        _functional_pool_classifier,
        True,
    ),
    Arch(
        "mobilenet_v3_small",
        _tv("mobilenet_v3_small"),
        "features",
        _features,
        _pool_classifier,
        False,
    ),
    Arch("efficientnet_b0", _tv("efficientnet_b0"), "features", _features, _pool_classifier, True),
    Arch("convnext_tiny", _tv("convnext_tiny"), "features", _features, _convnext_head, False),
    Arch(
        "regnet_x_400mf",
        _tv("regnet_x_400mf"),
        "trunk_output",
        _regnet_features,
        _pool_fc,
        True,
    ),
]

TIMM = [
    Arch("timm_resnet18", _timm("resnet18"), "layer4", _timm_features, _timm_head, True),
    Arch("timm_efficientnet_b0", _timm("efficientnet_b0"), None, _timm_features, _timm_head, True),
    Arch("timm_convnext_atto", _timm("convnext_atto"), None, _timm_features, _timm_head, False),
    Arch("timm_regnetx_002", _timm("regnetx_002"), None, _timm_features, _timm_head, True),
    Arch(
        "timm_mobilenetv3_small_050",
        _timm("mobilenetv3_small_050"),
        None,
        _timm_features,
        _timm_head,
        False,
    ),
]

ZOO = TORCHVISION + TIMM
ZOO_IDS = [a.name for a in ZOO]

_CACHE: dict[str, nn.Module] = {}


def model_of(arch: Arch) -> nn.Module:
    """The random-init model of ``arch`` in eval mode, built once per process (seed 0)."""
    if arch.name not in _CACHE:
        torch.manual_seed(0)
        model = arch.build().eval()
        _randomize_norms(model)
        _CACHE[arch.name] = model
    return _CACHE[arch.name]


def _randomize_norms(model: nn.Module) -> None:
    """Give BatchNorm layers non-trivial running statistics, as a trained model has.

    Fresh BatchNorm (mean 0, var 1, weight 1, bias 0) in eval mode is nearly the identity;
    random statistics make every layer matter, so a wrong layer cannot match by accident.
    """
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


def images(arch: Arch, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A deterministic batch of random images for ``arch``."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, arch.size, arch.size, generator=g)


def reference_grads(
    arch: Arch, x: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(A, dy/dA, logits)`` from the hand split and ``torch.autograd.grad``."""
    model = model_of(arch)
    acts = arch.features(model, x)
    logits = arch.head(model, acts)
    score = logits.gather(1, target[:, None]).sum()
    (grads,) = torch.autograd.grad(score, acts)
    return acts.detach(), grads, logits.detach()


def _relu(maps: torch.Tensor, relu: bool) -> torch.Tensor:
    return torch.relu(maps) if relu else maps


def ref_grad_cam(acts: torch.Tensor, grads: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """Grad-CAM as published (Selvaraju et al.): ReLU(sum_c mean_ij(dy/dA_c) A_c)."""
    return _relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1), relu)


def ref_hires_cam(acts: torch.Tensor, grads: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """HiResCAM (Draelos and Carin): ReLU(sum_c dy/dA_c * A_c)."""
    return _relu((grads * acts).sum(1), relu)


def ref_grad_cam_pp(acts: torch.Tensor, grads: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al., exponential-score closed form, as pytorch-grad-cam)."""
    g2, g3 = grads.pow(2), grads.pow(3)
    denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3
    alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
    weights = (alpha * torch.relu(grads)).sum(dim=(2, 3), keepdim=True)
    return _relu((weights * acts).sum(1), relu)


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two tensors, flattened."""
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-30))
