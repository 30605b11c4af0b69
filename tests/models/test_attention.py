"""Attention models: shapes, gradients, attention ranges, CAM hooks and penalties."""

from __future__ import annotations

import pytest
import torch
from captum import attr

from xai_feedback import RangeError, ShapeError
from xai_feedback.hooks import CAMHook
from xai_feedback.losses import CenterPenalty
from xai_feedback.models import CBAM, WARN, ResidualAttentionNet, SimpleCNN

G = torch.Generator


def _models() -> dict[str, torch.nn.Module]:
    return {
        "simple_fc": SimpleCNN(width=4, head="fc", generator=G().manual_seed(0)),
        "simple_gap": SimpleCNN(width=4, generator=G().manual_seed(0)),
        "simple_cbam": SimpleCNN(width=4, cbam=True, generator=G().manual_seed(0)),
        "resattnet": ResidualAttentionNet(width=4, generator=G().manual_seed(0)),
        "warn": WARN(widen=1, units=1, heads=2, generator=G().manual_seed(0)),
    }


MODELS = list(_models())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", [28, 32, 17])
def test_shapes_gradients_and_attention_range(name: str, size: int) -> None:
    model = _models()[name]
    x = torch.rand(3, 1, size, size, generator=G().manual_seed(1), requires_grad=True)
    logits = model(x)
    assert logits.shape == (3, 10)
    logits[:, 2].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    for key, maps in model.attention_maps().items():
        assert maps.dim() == 3 and maps.shape[0] == 3, key
        assert float(maps.detach().min()) >= 0 and float(maps.detach().max()) <= 1, key
        assert maps.requires_grad  # in the graph: can be penalized


def test_attention_maps_per_model() -> None:
    models = _models()
    x = torch.rand(2, 1, 28, 28)
    for model in models.values():
        model(x)
    assert models["simple_gap"].attention_maps() == {}
    assert [m.shape for m in models["simple_cbam"].attention_maps().values()] == [
        (2, 28, 28),
        (2, 14, 14),
        (2, 7, 7),
    ]
    assert sorted(models["resattnet"].attention_maps()) == ["stage1", "stage2"]
    assert sorted(models["warn"].attention_maps()) == ["head2", "head3"]


def test_cbam_matches_its_definition() -> None:
    block = CBAM(8, reduction=2)
    x = torch.randn(2, 8, 5, 5)
    mc = torch.sigmoid(
        block.channel.mlp(x.mean((2, 3), keepdim=True))
        + block.channel.mlp(x.amax((2, 3), keepdim=True))
    )
    xc = x * mc
    pooled = torch.cat([xc.mean(1, keepdim=True), xc.amax(1, keepdim=True)], 1)
    ms = torch.sigmoid(block.spatial.conv(pooled))
    assert torch.allclose(block(x), xc * ms, atol=1e-6)
    assert torch.allclose(block.attention, ms.squeeze(1))


@pytest.mark.parametrize("name", MODELS)
def test_grad_cam_hook_equals_captum(name: str) -> None:
    model = _models()[name].eval()
    x = torch.rand(3, 1, 28, 28, generator=G().manual_seed(2))
    y = torch.tensor([1, 4, 7])
    with CAMHook(model) as hook:
        logits = model(x)
        maps = hook.maps(logits, y, method="grad_cam", relu=True, scale="paper")
        cam_scale = hook.maps(logits, y, method="grad_cam", relu=True)
    layer = dict(model.named_modules())[model.cam_layer]
    ref = attr.LayerGradCam(model, layer).attribute(x, target=y, relu_attributions=True)
    assert torch.allclose(maps, ref.squeeze(1), atol=1e-5)
    h, w = maps.shape[-2:]
    assert torch.allclose(cam_scale, ref.squeeze(1) * (h * w), atol=1e-4)


@pytest.mark.parametrize("name", ["simple_gap", "simple_cbam", "resattnet"])
def test_cam_penalty_trains_through_attention_models(name: str) -> None:
    model = _models()[name].train()
    x = torch.rand(4, 1, 28, 28, generator=G().manual_seed(3))
    with CAMHook(model) as hook:
        logits = model(x)
        maps = hook.maps(logits, None, method="cam", all_classes=True)
    # penalize the CAMs and the attention maps themselves
    attention = sum((m.mean() for m in model.attention_maps().values()), torch.zeros(()))
    loss = CenterPenalty(0.7)(maps) + attention
    grads = torch.autograd.grad(
        loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True
    )
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    # CAM from the GAP head reproduces the logits (up to the bias)
    bias = model.classifier.bias
    assert torch.allclose(maps.mean(dim=(2, 3)) + bias, logits, atol=1e-4)


def test_bad_inputs() -> None:
    with pytest.raises(ShapeError, match="images"):
        SimpleCNN()(torch.rand(2, 3, 28, 28))
    with pytest.raises(ShapeError, match="at least 8x8"):
        ResidualAttentionNet(width=2)(torch.rand(1, 1, 6, 6))
    with pytest.raises(RangeError, match="head"):
        SimpleCNN(head="mlp")


@pytest.mark.parametrize("name", MODELS)
def test_grad_cam_penalty_trains_every_model(name: str) -> None:
    model = _models()[name].train()
    x = torch.rand(4, 1, 28, 28, generator=G().manual_seed(4))
    y = torch.tensor([0, 3, 5, 9])
    with CAMHook(model) as hook:
        logits = model(x)
        maps = hook.maps(logits, y, method="grad_cam", create_graph=True)
    loss = torch.nn.functional.cross_entropy(logits, y) + CenterPenalty(0.7)(maps.unsqueeze(1))
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    assert sum(1 for g in grads if g is not None and float(g.abs().sum()) > 0) > len(params) // 2
    assert all(p.grad is None for p in params)  # the user's .grad is untouched
