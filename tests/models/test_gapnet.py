import pytest
import torch

from xai_feedback import DTypeError, RangeError, ShapeError
from xai_feedback.data import load_digits
from xai_feedback.models import GAPNet
from xai_feedback.training import accuracy, fit


@pytest.mark.parametrize("size", [(28, 28), (32, 32), (8, 12)])
def test_shapes(size: tuple[int, int]) -> None:
    for pools in (0, 1, 2):
        model = GAPNet(in_channels=3, num_classes=5, width=4, depth=3, pools=pools)
        assert model(torch.rand(2, 3, *size)).shape == (2, 5)
        feats = model.features(torch.rand(2, 3, *size))
        side = 2**pools
        assert feats.shape == (2, model.num_features, size[0] // side, size[1] // side)


def test_logit_is_mean_of_cam_plus_bias() -> None:
    # the property that makes CAM exact for this head (Zhou et al. 2016)
    model = GAPNet(width=4, generator=torch.Generator().manual_seed(0)).eval().double()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    acts = model.features(x)
    cam = torch.einsum("kc,bchw->bkhw", model.classifier.weight, acts)
    assert torch.allclose(model(x), cam.mean(dim=(2, 3)) + model.classifier.bias, atol=1e-12)


def test_generator_makes_init_reproducible() -> None:
    a = GAPNet(width=4, generator=torch.Generator().manual_seed(7))
    b = GAPNet(width=4, generator=torch.Generator().manual_seed(7))
    c = GAPNet(width=4, generator=torch.Generator().manual_seed(8))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["classifier.weight"], sc["classifier.weight"])


def test_gradients_flow_to_every_parameter() -> None:
    model = GAPNet(width=4)
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())


def test_device(device: torch.device) -> None:
    model = GAPNet(width=4).to(device)
    assert model(torch.rand(2, 1, 28, 28, device=device)).device.type == device.type


def test_bad_inputs() -> None:
    model = GAPNet(width=4)
    with pytest.raises(ShapeError, match=r"`images` must have shape \(B, C, H, W\)"):
        model(torch.rand(1, 28, 28))
    with pytest.raises(ShapeError, match=r"dimension 1 \(C\) must be 1, got 3"):
        model(torch.rand(2, 3, 28, 28))
    with pytest.raises(DTypeError, match="floating-point"):
        model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ShapeError, match="at least 2x2"):
        model(torch.rand(2, 1, 1, 1))
    with pytest.raises(ShapeError, match="at least 4x4"):
        GAPNet(width=4, pools=2)(torch.rand(2, 1, 3, 3))
    with pytest.raises(RangeError, match="`pools` must be <= 4"):
        GAPNet(pools=5)
    with pytest.raises(RangeError, match="`width` must be >= 1"):
        GAPNet(width=0)
    with pytest.raises(RangeError, match="`num_classes` must be >= 2"):
        GAPNet(num_classes=1)
    with pytest.raises(DTypeError, match="`depth` must be an int"):
        GAPNet(depth=2.5)  # type: ignore[arg-type]


@pytest.mark.slow
def test_trains_to_97_percent_on_digits() -> None:
    g = torch.Generator().manual_seed(0)
    model = GAPNet(width=16, generator=g)
    history = fit(model, load_digits("train"), epochs=10, generator=g)
    assert history.accuracy[-1] > history.accuracy[0]
    assert accuracy(model, load_digits("test")) >= 0.97
