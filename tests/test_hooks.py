import gc
import warnings

import pytest
import torch
from torch import nn

from xai_feedback import DTypeError, HookError, LayerError, RangeError, ShapeError
from xai_feedback.hooks import ActivationHook, CAMHook
from xai_feedback.layers import resolve_layer
from xai_feedback.models import GAPNet


def _model() -> GAPNet:
    return GAPNet(width=4, generator=torch.Generator().manual_seed(0))


def test_cam_equals_hand_computed_on_tiny_model() -> None:
    # tiny model: 1x1 conv with known weights, GAP, known linear head
    conv = nn.Conv2d(1, 2, 1, bias=False)
    head = nn.Linear(2, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -2.0]).view(2, 1, 1, 1))
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]]))
        head.bias.zero_()
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    x = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]]])
    with CAMHook(model, "0", head="3") as hook:
        logits = model(x)
        maps = hook.maps(logits, all_classes=True)
    # A0 = x, A1 = -2x; CAM_0 = x, CAM_1 = -2x, CAM_2 = 2x - 2x = 0
    assert torch.equal(maps[0, 0], x[0, 0]) and torch.equal(maps[0, 1], -2 * x[0, 0])
    assert torch.equal(maps[0, 2], torch.zeros(2, 2))
    assert torch.allclose(logits, maps.mean(dim=(2, 3)))


def test_all_methods_targets_and_shapes(device: torch.device) -> None:
    model = _model().to(device)
    x = torch.rand(3, 1, 28, 28, device=device)
    y = torch.tensor([1, 2, 3], device=device)
    for method in ("cam", "grad_cam", "hires_cam", "grad_cam_pp"):
        with CAMHook(model) as hook:
            logits = model(x)
            one = hook.maps(logits, y, method=method)
            pred = hook.maps(logits, None, method=method)
            fn = hook.maps(logits, lambda z: z.argmin(1), method=method)
            every = hook.maps(logits, method=method, all_classes=True, size=(28, 28))
        assert one.shape == (3, 14, 14) and one.device.type == device.type
        assert every.shape == (3, 10, 28, 28)
        assert pred.shape == fn.shape == (3, 14, 14)
    # all-class gradient maps agree with per-target maps
    with CAMHook(model) as hook:
        logits = model(x)
        every = hook.maps(logits, method="hires_cam", all_classes=True)
        assert torch.allclose(
            every[torch.arange(3), y], hook.maps(logits, y, method="hires_cam"), atol=1e-6
        )


def test_cam_equals_hires_cam_times_hw_for_gap_head() -> None:
    model = _model().double().eval()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    with CAMHook(model) as hook:
        logits = model(x)
        cam = hook.maps(logits, torch.tensor([0, 9]))
        hires = hook.maps(
            logits, torch.tensor([0, 9]), method="hires_cam", relu=False, scale="paper"
        )
        # on the CAM scale (the default), HiResCAM and Grad-CAM *equal* CAM for a GAP head
        for method in ("hires_cam", "grad_cam"):
            same = hook.maps(logits, torch.tensor([0, 9]), method=method, relu=False)
            assert torch.allclose(cam, same, atol=1e-10)
    assert torch.allclose(cam, hires * 196, atol=1e-10)


def test_maps_are_differentiable_and_param_grad_untouched() -> None:
    model = _model()
    x = torch.rand(2, 1, 28, 28)
    for method in ("cam", "grad_cam", "hires_cam", "grad_cam_pp"):
        for p in model.parameters():
            p.grad = None
        with CAMHook(model) as hook:
            logits = model(x)
            maps = hook.maps(logits, torch.tensor([0, 1]), method=method)
        assert all(p.grad is None for p in model.parameters())  # untouched by the map
        grads = torch.autograd.grad(maps.pow(2).sum(), list(model.parameters()), allow_unused=True)
        conv_weight_grad = grads[0]
        assert conv_weight_grad is not None and float(conv_weight_grad.abs().sum()) > 0


def test_gradient_map_training_signal_matches_finite_difference() -> None:
    # d/dtheta of sum(hires_cam^2) through create_graph equals a finite difference
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 2),
    ).double()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1])

    def value() -> torch.Tensor:
        with CAMHook(model, "1", head="4") as hook:
            logits = model(x)
            return hook.maps(logits, y, method="hires_cam", relu=False).pow(2).sum()

    w = model[0].weight
    (analytic,) = torch.autograd.grad(value(), [w])
    eps = 1e-6
    with torch.no_grad():
        w[0, 0, 1, 1] += eps
    up = float(value().detach())
    with torch.no_grad():
        w[0, 0, 1, 1] -= 2 * eps
    down = float(value().detach())
    assert float(analytic[0, 0, 1, 1]) == pytest.approx((up - down) / (2 * eps), rel=1e-5)


def test_hooks_removed_after_block_and_after_exception() -> None:
    model = _model()
    layer = resolve_layer(model, None).module
    with CAMHook(model) as hook:
        assert len(layer._forward_hooks) == 1 and hook.active
    assert len(layer._forward_hooks) == 0 and not hook.active
    with pytest.raises(RuntimeError, match="boom"), CAMHook(model):
        model(torch.rand(1, 1, 28, 28))
        raise RuntimeError("boom")
    assert len(layer._forward_hooks) == 0
    with pytest.raises(HookError, match="inside the hook's `with` block"):
        _ = hook.activations


def test_training_flags_restored_even_on_error() -> None:
    model = _model()
    model.train()
    model.features[1].eval()  # a mixed state must come back exactly
    before = [m.training for m in model.modules()]
    with CAMHook(model, eval_mode=True):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before
    with pytest.raises(ValueError, match="inside"), CAMHook(model, eval_mode=True):
        raise ValueError("inside")
    assert [m.training for m in model.modules()] == before


def test_repeated_training_steps_do_not_grow_memory() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))

    def step() -> None:
        with CAMHook(model) as hook:
            logits = model(x)
            maps = hook.maps(logits, y, method="grad_cam", all_classes=False)
        loss = nn.functional.cross_entropy(logits, y) + maps.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def live_tensors() -> int:
        gc.collect()
        with warnings.catch_warnings():  # isinstance on torch's deprecated lazy attributes warns
            warnings.simplefilter("ignore")
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    for _ in range(5):
        step()
    base = live_tensors()
    for _ in range(100):
        step()
    assert live_tensors() <= base


def test_activation_hook_captures_graph_connected_output() -> None:
    model = _model()
    with ActivationHook(model, "features.0") as hook:
        model(torch.rand(2, 1, 28, 28))
        acts = hook.activations
    assert acts.shape == (2, 4, 28, 28) and acts.requires_grad


def test_clear_errors() -> None:
    model = _model()
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(LayerError, match=r"'features\.99' is not a module"):
        CAMHook(model, "features.99")
    with pytest.raises(LayerError, match="not part of `model`"):
        CAMHook(model, nn.Conv2d(1, 1, 1))
    with pytest.raises(DTypeError, match=r"`model` must be an nn\.Module"):
        CAMHook("model", "features")  # type: ignore[arg-type]
    with CAMHook(model, "features.0") as hook, pytest.raises(LayerError, match="feeds the head"):
        hook.maps(model(x), method="cam")  # 4 channels, but the head expects 16
    flat = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with CAMHook(flat, "1") as hook, pytest.raises(LayerError, match="4-D"):
        hook.maps(flat(x), method="grad_cam")
    with CAMHook(model) as hook:
        logits = model(x)
        with pytest.raises(ShapeError, match=r"`target`.*dimension 0 \(B\) must be 2, got 3"):
            hook.maps(logits, torch.tensor([0, 1, 2]))
        with pytest.raises(RangeError, match=r"classes in \[0, 10\), got values in \[0, 10\]"):
            hook.maps(logits, torch.tensor([0, 10]))
        with pytest.raises(RangeError, match=r"\[-1, 1\]"):
            hook.maps(logits, torch.tensor([-1, 1]))
        with pytest.raises(DTypeError, match="integer class indices"):
            hook.maps(logits, torch.tensor([0.0, 1.0]))
        with pytest.raises(RangeError, match="`method` must be one of"):
            hook.maps(logits, method="score_cam")
        with pytest.raises(ShapeError, match="batch size"):
            hook.maps(logits[:1])
    with CAMHook(model) as hook, torch.no_grad():
        logits = model(x)
        with pytest.raises(HookError, match=r"torch\.no_grad"):
            hook.maps(logits, method="grad_cam")
    with CAMHook(model) as hook, pytest.raises(HookError, match="has not run yet"):
        hook.maps(torch.zeros(2, 10))
