import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import gradcheck64
from xai_feedback import DTypeError, RangeError, ShapeError
from xai_feedback.functional import (
    cam_from_head,
    grad_cam,
    grad_cam_pp,
    hires_cam,
    normalize_maps,
    resize_maps,
)


def test_cam_from_head_hand_computed() -> None:
    # two channels, 2x2 map; W = [[1, -1], [0.5, 2]]
    acts = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])
    weight = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    expected0 = torch.tensor([[1.0, 1.0], [2.0, 4.0]])  # A0 - A1
    expected1 = torch.tensor([[0.5, 3.0], [3.5, 2.0]])  # 0.5 A0 + 2 A1
    all_maps = cam_from_head(acts, weight)
    assert all_maps.shape == (1, 2, 2, 2)
    assert torch.equal(all_maps[0, 0], expected0) and torch.equal(all_maps[0, 1], expected1)
    assert torch.equal(cam_from_head(acts, weight, torch.tensor([1]))[0], expected1)


def _numpy_grad_cam_pp(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    # independent NumPy transcription of Chattopadhay et al.'s closed form
    g2, g3 = grads**2, grads**3
    sum_a = acts.sum(axis=(2, 3))[:, :, None, None]
    denom = 2 * g2 + sum_a * g3
    denom = np.where(denom != 0, denom, 1e-7)
    a = np.where(grads != 0, g2 / denom, 0)
    w = (np.maximum(grads, 0) * a).sum(axis=(2, 3))
    return np.maximum((w[:, :, None, None] * acts).sum(axis=1), 0)


def test_gradient_methods_hand_computed(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    acts = torch.rand(3, 4, 5, 6, generator=gen, dtype=dtype)
    grads = torch.randn(3, 4, 5, 6, generator=gen, dtype=dtype)
    a, g = acts.double().numpy(), grads.double().numpy()
    gc_ref = np.maximum((g.mean(axis=(2, 3))[:, :, None, None] * a).sum(1), 0)
    hr_ref = np.maximum((g * a).sum(1), 0)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for fn, ref in (
        (grad_cam, gc_ref),
        (hires_cam, hr_ref),
        (grad_cam_pp, _numpy_grad_cam_pp(a, g)),
    ):
        out = fn(acts, grads)
        assert out.dtype == dtype and out.shape == (3, 5, 6)
        np.testing.assert_allclose(out.double().numpy(), ref, rtol=tol * 10, atol=tol)
    signed = grad_cam(acts, grads, relu=False)
    assert float(signed.min()) < 0


def test_gap_head_identities() -> None:
    # for GAP + linear, dy_k/dA = W_k / (hw): HiResCAM = CAM / hw and Grad-CAM = relu(CAM) / hw
    gen = torch.Generator().manual_seed(1)
    acts = torch.rand(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    weight = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    target = torch.tensor([1, 4])
    grads = (weight[target] / 16)[:, :, None, None].expand_as(acts)
    cam = cam_from_head(acts, weight, target)
    assert torch.allclose(hires_cam(acts, grads, relu=False), cam / 16)
    assert torch.allclose(grad_cam(acts, grads), torch.relu(cam) / 16)


def test_grad_cam_matches_captum_layer_gradcam() -> None:
    from captum.attr import LayerGradCam

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 8 * 8, 3),
    ).eval()
    x = torch.rand(5, 1, 8, 8)
    target = torch.tensor([0, 1, 2, 1, 0])
    captum = LayerGradCam(model, model[3])
    expected = captum.attribute(x, target=target, relu_attributions=True).squeeze(1)
    expected_signed = captum.attribute(x, target=target).squeeze(1)
    from xai_feedback.hooks import CAMHook

    with CAMHook(model, "3") as hook:
        logits = model(x)
        maps = hook.maps(logits, target, method="grad_cam", relu=True, scale="paper")
        signed = hook.maps(logits, target, method="grad_cam", scale="paper")  # hook: signed
        cam_scale = hook.maps(logits, target, method="grad_cam", relu=True)
    assert float(expected_signed.detach().min()) < 0  # the comparison covers both signs
    assert torch.allclose(maps, expected, atol=1e-5)
    assert torch.allclose(signed, expected_signed, atol=1e-5)
    assert torch.allclose(cam_scale, expected * 64, atol=1e-4)  # the CAM scale: times h*w


@pytest.mark.parametrize("mode", ["max", "sum", "minmax", "energy"])
def test_normalize_maps(mode: str, dtype: torch.dtype) -> None:
    maps = torch.randn(3, 2, 4, 5, dtype=dtype)
    maps[0, 0] = 0.0  # constant map: finite result
    out = normalize_maps(maps, mode)
    assert out.shape == maps.shape and out.dtype == dtype and bool(torch.isfinite(out).all())
    flat = out[1:].flatten(-2)
    if mode == "max":
        assert torch.allclose(flat.abs().amax(-1), torch.ones(2, 2, dtype=dtype), atol=1e-6)
    elif mode == "sum":
        assert torch.allclose(flat.abs().sum(-1), torch.ones(2, 2, dtype=dtype), atol=1e-6)
    elif mode == "minmax":
        assert torch.allclose(flat.amin(-1), torch.zeros(2, 2, dtype=dtype), atol=1e-6)
        assert torch.allclose(flat.amax(-1), torch.ones(2, 2, dtype=dtype), atol=1e-6)
    else:
        assert torch.allclose(flat.pow(2).sum(-1), torch.ones(2, 2, dtype=dtype), atol=1e-5)
    assert torch.equal(normalize_maps(maps, "none"), maps)


def test_resize_maps_and_device(device: torch.device) -> None:
    maps = torch.rand(2, 7, 7, device=device)
    out = resize_maps(maps, (28, 28))
    assert out.shape == (2, 28, 28) and out.device.type == device.type
    # area-resizing back recovers a nearest-upsampled map exactly
    up = resize_maps(maps, (28, 28), mode="nearest")
    assert torch.allclose(resize_maps(up, (7, 7), mode="area"), maps, atol=1e-6)
    assert resize_maps(torch.rand(2, 3, 7, 7), (14, 14)).shape == (2, 3, 14, 14)


def test_kernels_are_differentiable_float64() -> None:
    gen = torch.Generator().manual_seed(0)
    acts = torch.rand(2, 3, 3, 3, generator=gen) + 0.1
    grads = torch.randn(2, 3, 3, 3, generator=gen)
    w = torch.randn(4, 3, generator=gen)
    gradcheck64(lambda a, g: grad_cam(a, g, relu=False), [acts, grads])
    gradcheck64(lambda a, g: hires_cam(a, g, relu=False), [acts, grads])
    gradcheck64(lambda a, g: grad_cam_pp(a, g, relu=False), [acts, grads])
    gradcheck64(lambda a, ww: cam_from_head(a, ww), [acts, w])
    gradcheck64(lambda m: normalize_maps(m, "energy"), [torch.randn(2, 3, 3)])


def test_bad_inputs() -> None:
    with pytest.raises(ShapeError, match=r"`acts` must have shape \(B, C, h, w\)"):
        grad_cam(torch.rand(3, 4, 4), torch.rand(3, 4, 4))
    with pytest.raises(ShapeError, match="`grads`"):
        hires_cam(torch.rand(1, 2, 4, 4), torch.rand(1, 3, 4, 4))
    with pytest.raises(ShapeError, match=r"`weight`.*dimension 1 \(C\) must be 2"):
        cam_from_head(torch.rand(1, 2, 4, 4), torch.rand(3, 5))
    with pytest.raises(ShapeError, match="`maps` must have shape"):
        normalize_maps(torch.rand(4, 4), "max")
    with pytest.raises(RangeError, match="`mode` must be one of"):
        normalize_maps(torch.rand(1, 4, 4), "l3")
    with pytest.raises(DTypeError, match="floating-point"):
        resize_maps(torch.ones(1, 4, 4, dtype=torch.long), (8, 8))
