from typing import cast

import pytest
import torch
from captum import attr

from xai_feedback import DTypeError, LayerError, RangeError, ShapeError
from xai_feedback.attribution import attribute, ensemble_noise, reduce_channels
from xai_feedback.methods import method_names
from xai_feedback.models import GAPNet


@pytest.fixture(scope="module")
def model() -> GAPNet:
    m = GAPNet(width=4, generator=torch.Generator().manual_seed(0))
    # non-trivial BatchNorm statistics, so train/eval mode differences would show
    m.train()
    with torch.no_grad():
        m(torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    return m.eval()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.rand(4, 1, 28, 28, generator=g), torch.tensor([0, 3, 7, 9])


def _direct(model: GAPNet, method: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_()
    if method == "saliency":
        return attr.Saliency(model).attribute(x, target=y)
    if method == "input_x_gradient":
        return attr.InputXGradient(model).attribute(x, target=y)
    if method == "deconvnet":
        return attr.Deconvolution(model).attribute(x, target=y)
    if method == "guided_backprop":
        return attr.GuidedBackprop(model).attribute(x, target=y)
    if method == "integrated_gradients":
        return attr.IntegratedGradients(model).attribute(x, target=y, baselines=0.0, n_steps=20)
    if method == "grad_cam":  # on the CAM scale: captum's (paper) Grad-CAM times h*w = 196
        maps = attr.LayerGradCam(model, model.features).attribute(
            x, target=y, relu_attributions=True
        )
        return attr.LayerAttribution.interpolate(maps * 196, (28, 28), interpolate_mode="bilinear")
    if method == "hires_cam":  # sum over channels of gradient x activation, times h*w
        maps = attr.LayerGradientXActivation(model, model.features).attribute(x, target=y)
        maps = torch.relu(maps.sum(dim=1, keepdim=True)) * 196
        return attr.LayerAttribution.interpolate(maps, (28, 28), interpolate_mode="bilinear")
    if method == "cam":  # by hand: head weights times the pooled layer's activations
        with torch.no_grad():
            acts = model.features(x)
            maps = torch.einsum("bc,bchw->bhw", model.classifier.weight[y], acts)[:, None]
        return attr.LayerAttribution.interpolate(maps, (28, 28), interpolate_mode="bilinear")
    return attr.GuidedGradCam(model, model.features).attribute(x, target=y)


# every registered method with an independent reference (grad_cam_pp: tests/functional)
# (the relevance kind needs a vision transformer: tests/test_relevance.py)
@pytest.mark.parametrize(
    "method",
    [m for m in method_names() if m != "grad_cam_pp" and m not in method_names("relevance")],
)
def test_equals_direct_captum_call(
    model: GAPNet, data: tuple[torch.Tensor, torch.Tensor], method: str
) -> None:
    x, y = data
    steps = {"n_steps": 20} if method == "integrated_gradients" else {}
    ours = attribute(model, x, y, method=method, batch_size=3, options=steps)  # chunked
    expected = _direct(model, method, x, y).detach()
    assert ours.shape == expected.shape
    assert float(expected.abs().max()) > 0
    assert torch.allclose(ours, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("ensemble", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_ensembles_equal_captum_noise_tunnel(
    model: GAPNet, data: tuple[torch.Tensor, torch.Tensor], ensemble: str, method: str
) -> None:
    x, y = data
    n, stdev = 5, 0.2
    base = attr.Saliency(model) if method == "saliency" else attr.IntegratedGradients(model)
    kwargs = {"n_steps": 10} if method == "integrated_gradients" else {}
    torch.manual_seed(123)
    expected = (
        attr.NoiseTunnel(base)
        .attribute(
            x.clone().requires_grad_(),
            nt_type=ensemble,
            nt_samples=n,
            stdevs=stdev,
            target=y,
            **kwargs,
        )
        .detach()
    )
    torch.manual_seed(123)  # the same draw captum makes
    noise = torch.normal(0, torch.tensor(stdev).repeat((len(x) * n, 1, 28, 28)))
    ours = attribute(
        model,
        x,
        y,
        method=method,
        ensemble=ensemble,
        n_samples=n,
        noise=noise,
        batch_size=7,
        options=kwargs,
    )
    assert torch.allclose(ours, expected, atol=1e-6, rtol=1e-5)


def test_ensemble_noise_is_relative_to_each_image_range_and_seeded() -> None:
    x = torch.zeros(2, 1, 16, 16)
    x[0, 0, 0, 0] = 1.0  # range 1
    x[1, 0, 0, 0] = 10.0  # range 10
    noise = ensemble_noise(x, 400, 0.15, generator=torch.Generator().manual_seed(0)).view(
        2, 400, -1
    )
    assert float(noise[0].std()) == pytest.approx(0.15, rel=0.02)
    assert float(noise[1].std()) == pytest.approx(1.5, rel=0.02)
    again = ensemble_noise(x, 400, 0.15, generator=torch.Generator().manual_seed(0)).view(
        2, 400, -1
    )
    assert torch.equal(noise, again)


def test_restores_training_flags_and_reduces(
    model: GAPNet, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, _ = data
    model.train()
    model.features[0].eval()
    before = [m.training for m in model.modules()]
    maps = attribute(model, x, None, method="guided_backprop", reduce="abs_sum")
    assert [m.training for m in model.modules()] == before
    model.eval()
    assert maps.shape == (4, 28, 28) and not maps.requires_grad
    a = torch.randn(2, 3, 4, 4)
    assert torch.equal(reduce_channels(a, "sum"), a.sum(1))
    assert torch.equal(reduce_channels(a, "sum_sq"), a.pow(2).sum(1))
    assert torch.equal(reduce_channels(a, "max_abs"), a.abs().amax(1))
    assert torch.equal(reduce_channels(a, "none"), a)


def test_device_and_dtype(device: torch.device) -> None:
    model = GAPNet(width=4).to(device).double()
    x = torch.rand(2, 1, 28, 28, device=device, dtype=torch.float64)
    out = attribute(
        model,
        x,
        torch.tensor([0, 1], device=device),
        method="saliency",
        ensemble="smoothgrad",
        n_samples=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.device.type == device.type and out.dtype == torch.float64


def test_clear_errors(model: GAPNet, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    with pytest.raises(RangeError, match="`method` must be one of"):
        attribute(model, x, y, method="lime")
    with pytest.raises(RangeError, match="`ensemble` must be one of"):
        attribute(model, x, y, ensemble="bagging")
    with pytest.raises(RangeError, match="`reduce` must be one of"):
        attribute(model, x, y, reduce="median")
    with pytest.raises(ShapeError, match="`images`"):
        attribute(model, x[0], y)
    with pytest.raises(DTypeError, match="floating-point"):
        attribute(model, x.long(), y)
    with pytest.raises(RangeError, match=r"classes in \[0, 10\)"):
        attribute(model, x, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ShapeError, match="`noise` must have shape"):
        attribute(model, x, y, ensemble="smoothgrad", n_samples=2, noise=torch.zeros(3, 1, 28, 28))
    with pytest.raises(LayerError, match="not a module"):
        attribute(model, x, y, method="grad_cam", layer="nope")
    with pytest.raises(RangeError, match="`n_samples` must be >= 1"):
        attribute(model, x, y, ensemble="vargrad", n_samples=0)
    with pytest.raises(RangeError, match=r"'saliency' does not take option\(s\) \['n_steps'\]"):
        attribute(model, x, y, method="saliency", options={"n_steps": 5})
    with pytest.raises(RangeError, match="does not take option"):
        attribute(model, x, y, method="integrated_gradients", options={"relu": True})
    with pytest.raises(ShapeError, match="empty batch"):
        attribute(model, x[:0], y[:0])


@pytest.mark.parametrize("method", method_names("cam"))
def test_size_none_is_the_kernel_at_the_layer_grid(
    model: GAPNet, data: tuple[torch.Tensor, torch.Tensor], method: str
) -> None:
    """``size=None, reduce="sum"``: the method's maps at the layer grid, exactly.

    The reference is the kernel by hand through ``CAMHook.maps`` in eval mode, with the
    published sign (ReLU for the gradient methods, signed CAM) and the CAM scale.
    """
    from xai_feedback.functional.cam import resize_maps
    from xai_feedback.hooks import CAMHook
    from xai_feedback.methods import CAMMethod, get_method

    x, y = data
    relu = cast(CAMMethod, get_method(method)).default_relu
    with CAMHook(model, eval_mode=True) as hook:
        want = hook.maps(model(x), y, method=method, relu=relu, create_graph=False).detach()
    got = attribute(model, x, y, method=method, size=None, reduce="sum")
    assert got.shape == want.shape == (4, 14, 14)
    assert torch.equal(got, want)
    # the default ("input") and a pair resize the same maps bilinearly
    torch.testing.assert_close(
        attribute(model, x, y, method=method)[:, 0], resize_maps(want, (28, 28))
    )
    there = attribute(model, x, y, method=method, size=(9, 5), reduce="sum")
    torch.testing.assert_close(there, resize_maps(want, (9, 5)))


def test_size_for_captum_methods_and_bad_sizes(
    model: GAPNet, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """A captum method's own resolution is the input's: ``None`` == ``"input"``; a pair resizes."""
    from xai_feedback.functional.cam import resize_maps

    x, y = data
    own = attribute(model, x, y, method="saliency")
    assert torch.equal(attribute(model, x, y, method="saliency", size=None), own)
    there = attribute(model, x, y, method="saliency", size=(7, 7))
    assert there.shape == (4, 1, 7, 7)
    torch.testing.assert_close(there, resize_maps(own, (7, 7)))
    with pytest.raises(RangeError, match="`size` must be one of"):
        attribute(model, x, y, method="grad_cam", size="grid")  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="`size` must be a pair"):
        attribute(model, x, y, method="grad_cam", size=(7,))  # type: ignore[arg-type]
    with pytest.raises(RangeError, match=r"`size\[1\]` must be >= 1"):
        attribute(model, x, y, method="grad_cam", size=(7, 0))
