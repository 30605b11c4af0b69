"""SimpleConvNet: the XIL typology's network, layer by layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xai_feedback.errors import ShapeError
from xai_feedback.models import SimpleConvNet


def test_output_shape_and_layers() -> None:
    model = SimpleConvNet(generator=torch.Generator().manual_seed(0))
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert SimpleConvNet(7)(torch.rand(2, 1, 28, 28)).shape == (2, 7)
    conv1, last = model.conv1, model.last_conv
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size) == (1, 20, (5, 5))
    assert (last.in_channels, last.out_channels, last.kernel_size) == (20, 50, (5, 5))
    assert (model.fc1.in_features, model.fc1.out_features) == (800, 256)
    assert (model.fc2.in_features, model.fc2.out_features) == (256, 10)


def test_last_conv_map_is_8x8() -> None:
    model = SimpleConvNet()
    seen: list[torch.Size] = []
    handle = model.last_conv.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        model(torch.rand(2, 1, 28, 28))
    finally:
        handle.remove()
    assert seen == [torch.Size([2, 50, 8, 8])]  # 28 -5+1 = 24, pool 12, -5+1 = 8


def test_parameter_count_by_hand() -> None:
    conv1 = 20 * 1 * 5 * 5 + 20
    last_conv = 50 * 20 * 5 * 5 + 50
    fc1 = 800 * 256 + 256
    fc2 = 256 * 10 + 10
    model = SimpleConvNet()
    assert sum(p.numel() for p in model.parameters()) == conv1 + last_conv + fc1 + fc2 == 233196


def test_forward_matches_functional_reference() -> None:
    model = SimpleConvNet(generator=torch.Generator().manual_seed(1))
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    f = nn.functional
    h = f.max_pool2d(f.relu(f.conv2d(x, model.conv1.weight, model.conv1.bias)), 2)
    h = f.max_pool2d(f.relu(f.conv2d(h, model.last_conv.weight, model.last_conv.bias)), 2)
    h = f.relu(h.reshape(4, 800) @ model.fc1.weight.T + model.fc1.bias)
    expected = h @ model.fc2.weight.T + model.fc2.bias
    torch.testing.assert_close(model(x), expected)


def test_generator_gives_reproducible_default_scale_init() -> None:
    a = SimpleConvNet(generator=torch.Generator().manual_seed(3))
    b = SimpleConvNet(generator=torch.Generator().manual_seed(3))
    c = SimpleConvNet(generator=torch.Generator().manual_seed(4))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.fc1.weight, c.fc1.weight)
    # PyTorch's default: Kaiming-uniform with a = sqrt(5) is uniform in +-1/sqrt(fan_in)
    bound = 1 / (800**0.5)
    assert float(a.fc1.weight.detach().abs().max()) <= bound
    assert float(a.fc1.weight.detach().abs().max()) > 0.95 * bound
    assert float(a.fc1.bias.detach().abs().max()) <= bound


def test_rejects_other_input_shapes() -> None:
    with pytest.raises(ShapeError, match="x"):
        SimpleConvNet()(torch.rand(2, 3, 28, 28))
    with pytest.raises(ShapeError, match="x"):
        SimpleConvNet()(torch.rand(2, 1, 32, 32))
