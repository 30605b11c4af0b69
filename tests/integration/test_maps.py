"""Maps on real models: CAM reproduces the logits on GAP + linear heads, Grad-CAM /
HiResCAM / Grad-CAM++ equal hand computations from ``torch.autograd.grad``, and the peers
(captum, torchcam, pytorch-grad-cam) agree where their definitions coincide with ours."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchcam.methods import GradCAM as TorchcamGradCAM

from tests.integration._zoo import (
    ZOO,
    ZOO_IDS,
    Arch,
    corr,
    images,
    model_of,
    ref_grad_cam,
    ref_grad_cam_pp,
    ref_hires_cam,
    reference_grads,
)
from xai_feedback.errors import LayerError
from xai_feedback.hooks import CAMHook

GAP = [a for a in ZOO if a.gap_linear]
NOT_GAP = [a for a in ZOO if not a.gap_linear]
TARGET = torch.tensor([3, 7])
REFS = {"grad_cam": ref_grad_cam, "hires_cam": ref_hires_cam, "grad_cam_pp": ref_grad_cam_pp}


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> bool:
    # Tolerance relative to the map's own magnitude: float32 sums over 300-2000 channels.
    scale = float(expected.abs().max().clamp_min(1e-12))
    return bool(torch.allclose(actual, expected, rtol=0, atol=rtol * scale))


def _linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


@pytest.mark.parametrize("arch", GAP, ids=[a.name for a in GAP])
def test_cam_reproduces_the_logits(arch: Arch) -> None:
    model, x = model_of(arch), images(arch)
    with torch.no_grad():
        acts = arch.features(model, x)
    fc = _linear(model)
    with CAMHook(model) as hook:
        logits = model(x)
        maps = hook.maps(logits, all_classes=True, method="cam")
        one = hook.maps(logits, TARGET, method="cam")
    assert maps.shape == (2, 10, *acts.shape[-2:])
    hand = torch.einsum("kc,bchw->bkhw", fc.weight, acts)
    assert _close(maps, hand)
    assert torch.allclose(maps.mean(dim=(2, 3)) + fc.bias, logits, atol=1e-4)
    assert _close(one, hand[torch.arange(2), TARGET])


# Every refusal suggests the methods defined for any layer: a channel mismatch (VGG's MLP
# head, MobileNetV3's Linear-Hardswish-Linear) as well as a failed logit check (ConvNeXt).
NOT_GAP_PARAMS = [pytest.param(a, id=a.name) for a in NOT_GAP]


@pytest.mark.parametrize("arch", NOT_GAP_PARAMS)
def test_cam_on_a_head_that_is_not_gap_linear_is_refused(arch: Arch) -> None:
    # VGG (MLP head), MobileNetV3 (Linear-Hardswish-Linear), ConvNeXt (LayerNorm after the
    # pooling): the class-map means cannot reproduce the logits, so "cam" must not answer.
    model, x = model_of(arch), images(arch)
    with CAMHook(model) as hook:
        logits = model(x)
        with pytest.raises(LayerError, match=r"grad_cam|hires_cam"):
            hook.maps(logits, TARGET, method="cam")


@pytest.mark.parametrize("arch", NOT_GAP, ids=[a.name for a in NOT_GAP])
def test_cam_on_a_head_that_is_not_gap_linear_is_a_layer_error(arch: Arch) -> None:
    # The refusal itself (whatever its wording) holds on every such head.
    model, x = model_of(arch), images(arch)
    with CAMHook(model) as hook:
        logits = model(x)
        with pytest.raises(LayerError, match="cam"):
            hook.maps(logits, TARGET, method="cam")


@pytest.mark.parametrize("arch", GAP, ids=[a.name for a in GAP])
def test_grad_cam_and_hires_cam_at_cam_scale_equal_cam(arch: Arch) -> None:
    model, x = model_of(arch), images(arch)
    with CAMHook(model) as hook:
        logits = model(x)
        cam = hook.maps(logits, TARGET, method="cam", relu=False)
        grad = hook.maps(logits, TARGET, method="grad_cam", relu=False, scale="cam")
        hires = hook.maps(logits, TARGET, method="hires_cam", relu=False, scale="cam")
        default = hook.maps(logits, TARGET, method="grad_cam", relu=False)
    assert _close(grad, cam, 1e-4)
    assert _close(hires, cam, 1e-4)
    assert torch.equal(default, grad)  # scale="cam" is the default


# scale="cam" multiplies the published maps by these factors (the lead's documented choice:
# Grad-CAM and HiResCAM by h*w, so that they equal CAM on GAP + linear heads; Grad-CAM++ by 2).
CAM_SCALE = {"grad_cam": lambda h, w: h * w, "hires_cam": lambda h, w: h * w}


@pytest.mark.parametrize("method", sorted(REFS))
@pytest.mark.parametrize("arch", ZOO, ids=ZOO_IDS)
def test_gradient_maps_equal_hand_computation(arch: Arch, method: str) -> None:
    model, x = model_of(arch), images(arch)
    acts, grads, _ = reference_grads(arch, x, TARGET)
    signed = REFS[method](acts, grads, relu=False)
    assert float(signed.abs().max()) > 0  # the reference is not trivially zero
    with CAMHook(model) as hook:
        logits = model(x)
        paper = hook.maps(logits, TARGET, method=method, scale="paper", relu=False)
        paper_relu = hook.maps(logits, TARGET, method=method, scale="paper", relu=True)
        default = hook.maps(logits, TARGET, method=method, scale="paper")
        cam = hook.maps(logits, TARGET, method=method, scale="cam", relu=False)
    h, w = acts.shape[-2:]
    factor = CAM_SCALE.get(method, lambda h, w: 2)(h, w)
    tol = 1e-3 if method == "grad_cam_pp" else 1e-4
    assert _close(paper, signed, tol)
    assert _close(paper_relu, torch.relu(signed), tol)  # the published definition
    assert torch.equal(default, paper)  # the hook's one rule: signed unless relu=True
    assert _close(cam, signed * factor, tol)


@pytest.mark.parametrize("arch", ZOO[:2], ids=ZOO_IDS[:2])
def test_maps_are_differentiable_in_the_parameters(arch: Arch) -> None:
    # The maps stay in the graph (create_graph=True): a penalty on them reaches the weights,
    # and its gradient equals the one of the hand map (double backward through the model).
    model, x = model_of(arch), images(arch)
    params = [model.layer4[-1].conv2.weight, model.layer4[-1].bn2.weight, model.fc.weight]
    with CAMHook(model) as hook:
        logits = model(x)
        maps = hook.maps(logits, TARGET, method="grad_cam", scale="paper", relu=False)
    got = torch.autograd.grad(maps.pow(2).sum(), params)
    acts = arch.features(model, x)
    score = arch.head(model, acts).gather(1, TARGET[:, None]).sum()
    (g,) = torch.autograd.grad(score, acts, create_graph=True)
    hand = (g.mean(dim=(2, 3), keepdim=True) * acts).sum(1)
    want = torch.autograd.grad(hand.pow(2).sum(), params)
    for a, b in zip(got, want, strict=True):
        assert _close(a, b, 1e-3)


# ----- peers -----------------------------------------------------------------------------
# DenseNet is left out: the peers hook `features` (norm5, before DenseNet's functional relu),
# a different map from the pooled one that CAMHook explains. On the rest they coincide.
PEERS = [a for a in ZOO if a.name in {"resnet18", "resnet50", "efficientnet_b0", "timm_resnet18"}]
PEER_IDS = [a.name for a in PEERS]


def _layer_module(model: nn.Module) -> tuple[str, nn.Module]:
    with CAMHook(model) as hook:
        name = hook.layer_name
    return name, dict(model.named_modules())[name]


@pytest.mark.parametrize("arch", PEERS, ids=PEER_IDS)
def test_captum_layer_grad_cam_agrees(arch: Arch) -> None:
    model, x = model_of(arch), images(arch)
    _, module = _layer_module(model)
    theirs = LayerGradCam(model, module).attribute(x, target=TARGET, relu_attributions=True)
    with CAMHook(model) as hook:
        ours = hook.maps(model(x), TARGET, method="grad_cam", scale="paper", relu=True)
    assert _close(ours, theirs.squeeze(1).detach())


@pytest.mark.parametrize("arch", PEERS, ids=PEER_IDS)
def test_torchcam_grad_cam_agrees(arch: Arch) -> None:
    model, x = model_of(arch), images(arch)
    name, _ = _layer_module(model)
    with TorchcamGradCAM(model, target_layer=name, input_shape=(3, arch.size, arch.size)) as ext:
        scores = model(x)
        (theirs,) = ext(class_idx=TARGET.tolist(), scores=scores, normalized=False)
    with CAMHook(model) as hook:
        ours = hook.maps(model(x), TARGET, method="grad_cam", scale="paper", relu=True)
    assert _close(ours, theirs)
    # torchcam's GradCAMpp is not compared: in 0.5.0 it divides a boolean-indexed copy in
    # place (`alpha[idx][mask].div_(...)`), so its alpha is g^2 - not the published formula.


@pytest.mark.parametrize(
    ("peer", "method"),
    [(GradCAM, "grad_cam"), (HiResCAM, "hires_cam"), (GradCAMPlusPlus, "grad_cam_pp")],
    ids=["GradCAM", "HiResCAM", "GradCAMPlusPlus"],
)
@pytest.mark.parametrize("arch", PEERS, ids=PEER_IDS)
def test_pytorch_grad_cam_agrees(arch: Arch, peer: type, method: str) -> None:
    # pytorch-grad-cam returns ReLU'd maps, min-max normalized per image and resized to the
    # input with OpenCV (bilinear): compare at the input size, per image, by correlation.
    model, x = model_of(arch), images(arch)
    _, module = _layer_module(model)
    with peer(model=model, target_layers=[module]) as extractor:
        theirs = torch.as_tensor(
            extractor(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in TARGET])
        )
    with CAMHook(model) as hook:
        ours = hook.maps(model(x), TARGET, method=method, scale="paper", relu=True)
    ours_up = F.interpolate(ours[:, None], size=x.shape[-2:], mode="bilinear")[:, 0].detach()
    compared = 0
    for i in range(len(x)):
        if float(ours_up[i].max()) == 0:  # all evidence negative: both are the zero map
            assert float(theirs[i].abs().max()) < 1e-6, (arch.name, method, i)
            continue
        assert corr(ours_up[i], theirs[i]) >= 0.99, (arch.name, method, i)
        compared += 1
    assert compared >= 1
