import pytest
import torch
from torch import nn

from xai_feedback import DTypeError, RangeError, ShapeError
from xai_feedback.hooks import CAMHook
from xai_feedback.models import BasicBlock, SmallResNet
from xai_feedback.models.resnet import SmallResNet as Direct


def test_exported() -> None:
    assert SmallResNet is Direct


@pytest.mark.parametrize(
    ("size", "stem", "strides", "side"),
    [(64, 2, (1, 2, 2), 8), (28, 1, (1, 2, 1), 14), (33, 2, (1, 2, 2), 5)],
)
def test_cam_is_exact_at_the_documented_resolution(
    size: int, stem: int, strides: tuple[int, int, int], side: int
) -> None:
    g = torch.Generator().manual_seed(0)
    model = SmallResNet(3, 7, width=4, stem_stride=stem, strides=strides, generator=g).eval()
    x = torch.rand(2, 3, size, size, generator=g)
    with CAMHook(model) as hook, torch.no_grad():
        out = model(x)
        maps = hook.maps(out, all_classes=True)
    assert out.shape == (2, 7)
    # conv output sizes by hand: ceil(n / s) for a 3x3 conv with padding 1
    assert maps.shape == (2, 7, side, side)
    # GAP + linear head (Zhou et al. 2016): each logit is its CAM's mean plus the bias
    assert torch.allclose(maps.mean((2, 3)) + model.fc.bias, out, atol=1e-5)


def test_block_matches_its_formula() -> None:
    block = BasicBlock(2, 4, stride=2).eval()
    x = torch.rand(1, 2, 6, 6)
    assert block.downsample is not None
    ref = torch.relu(
        block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))) + block.downsample(x)
    )
    assert torch.equal(block(x), ref)
    same = BasicBlock(4, 4).eval()
    assert same.downsample is None
    y = torch.rand(1, 4, 5, 5)
    assert torch.equal(
        same(y), torch.relu(same.bn2(same.conv2(torch.relu(same.bn1(same.conv1(y))))) + y)
    )


def test_generator_reproducible_and_every_parameter_trains() -> None:
    a = SmallResNet(width=4, blocks=2, generator=torch.Generator().manual_seed(3))
    b = SmallResNet(width=4, blocks=2, generator=torch.Generator().manual_seed(3))
    assert all(
        torch.equal(p, q)
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert sum(isinstance(m, BasicBlock) for m in a.modules()) == 6
    a(torch.rand(4, 3, 16, 16)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in a.parameters())


def test_bad_inputs_name_the_argument() -> None:
    model = SmallResNet(3, width=4)
    with pytest.raises(ShapeError, match="x"):
        model(torch.rand(2, 1, 16, 16))
    with pytest.raises(DTypeError):
        model(torch.rand(2, 3, 16, 16, dtype=torch.float64))
    with pytest.raises(RangeError, match="strides"):
        SmallResNet(strides=(1, 2))
    with pytest.raises(RangeError, match="width"):
        SmallResNet(width=0)
    assert isinstance(model.layer3, nn.Sequential)
