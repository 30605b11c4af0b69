"""Contribution maps, their penalty and objective, against hand computations and differences."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xai_feedback.errors import DTypeError, LayerError, MissingInputError, RangeError, ShapeError
from xai_feedback.functional.contributions import (
    contribution_maps,
    contribution_penalty,
    log_probability_sum,
    receptive_field,
)
from xai_feedback.objectives import contribution_penalty_objective
from xai_feedback.training import Batch


class ConvLinear(nn.Module):
    """conv 1->2 k2 on 3x3 images (a 2x2 map), flatten, linear 8->3: a non-GAP head."""

    def __init__(self, act: nn.Module | None = None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 2)
        self.head = nn.Linear(8, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)).flatten(1))


def test_log_probability_sum_by_hand() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])  # p = (1/4, 3/4) and (1/2, 1/2)
    expected = torch.tensor([math.log(1 / 4) + math.log(3 / 4), 2 * math.log(1 / 2)])
    torch.testing.assert_close(log_probability_sum(logits), expected)


def test_contribution_maps_by_hand_for_a_flatten_linear_head() -> None:
    model = ConvLinear().double()
    x = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    acts = model.conv(x)
    logits = model.head(acts.flatten(1))
    maps = contribution_maps(log_probability_sum(logits), acts)
    # by hand: d/dz_k sum_j log p_j = 1 - K p_k; dS/dA = (1 - K p) W reshaped to (2, 2, 2)
    with torch.no_grad():
        p = torch.softmax(logits, 1)
        grads = ((1 - 3 * p) @ model.head.weight).view(2, 2, 2, 2)
        expected = (acts * grads).sum(1)
    torch.testing.assert_close(maps, expected)
    assert maps.shape == (2, 2, 2) and maps.requires_grad


def test_contributions_of_a_linear_score_sum_to_the_score_without_bias() -> None:
    model = ConvLinear().double()
    x = torch.randn(3, 1, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    acts = model.conv(x)
    logits = model.head(acts.flatten(1))
    labels = torch.tensor([0, 2, 1])
    maps = contribution_maps(logits.gather(1, labels[:, None]).squeeze(1), acts)
    # a head linear in A: the cells' contributions add up to z_y - b_y exactly
    torch.testing.assert_close(
        maps.sum((1, 2)), (logits - model.head.bias).gather(1, labels[:, None])[:, 0]
    )


def test_contribution_maps_errors() -> None:
    acts = torch.rand(2, 3, 4, 4, requires_grad=True)
    with pytest.raises(ShapeError, match="scores"):
        contribution_maps(acts.sum((1, 2)), acts)
    with pytest.raises(RangeError, match="scores"):
        contribution_maps(torch.zeros(2), acts)
    with pytest.raises(RangeError, match="does not depend"):
        contribution_maps(torch.rand(2, requires_grad=True) * 1.0, acts)
    with pytest.raises(DTypeError):
        contribution_maps(torch.zeros(2), torch.zeros(2, 3, 4, 4, dtype=torch.long))


def test_contribution_penalty_by_hand_with_receptive_field_cover() -> None:
    masks = torch.zeros(1, 4, 4)
    masks[0, 0, 0] = 1.0
    maps = torch.tensor([[[3.0, 5.0], [7.0, 1.0]]])
    # field 1: cell (0, 0) covers 1 of its 4 pixels -> weight 1/4
    torch.testing.assert_close(contribution_penalty(maps, masks), torch.tensor((3.0 / 4) ** 2))
    # field 3: the box filter puts 1/9 on pixels (0..1, 0..1), so cell (0, 0) gets 1/9, the rest 0
    torch.testing.assert_close(contribution_penalty(maps, masks, 3), torch.tensor((3.0 / 9) ** 2))
    # field 5: pixels (0..2, 0..2) get 1/25; cells (0, 1), (1, 0) see 2 such pixels, (1, 1) one
    w = torch.tensor([[4 / 25 / 4, 2 / 25 / 4], [2 / 25 / 4, 1 / 25 / 4]])
    torch.testing.assert_close(contribution_penalty(maps, masks, 5), (w * maps[0]).pow(2).sum())
    # the batch mean: two images, the second unmasked
    both = contribution_penalty(maps.repeat(2, 1, 1), torch.cat([masks, torch.zeros(1, 4, 4)]))
    torch.testing.assert_close(both, torch.tensor((3.0 / 4) ** 2 / 2))


def test_contribution_penalty_errors() -> None:
    with pytest.raises(ShapeError, match="masks"):
        contribution_penalty(torch.rand(2, 2, 2), torch.ones(3, 4, 4))
    with pytest.raises(ShapeError, match="maps"):
        contribution_penalty(torch.rand(2, 3, 2, 2), torch.ones(2, 4, 4))
    with pytest.raises(RangeError, match="field"):
        contribution_penalty(torch.rand(2, 2, 2), torch.ones(2, 4, 4), 0)


def simple_conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 3, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 5), nn.ReLU()
    )


def test_receptive_field_of_known_stacks() -> None:
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert receptive_field(nn.Conv2d(1, 2, 3), x) == 3
    assert receptive_field(nn.Sequential(nn.Conv2d(1, 2, 5), nn.MaxPool2d(2)), x) == 6
    # conv 5, pool 2, conv 5: 5 + 1 + 4 * 2 = 14 (SimpleConvNet's last convolution)
    assert receptive_field(simple_conv_net(), x) == 14
    with pytest.raises(LayerError, match="depend"):
        receptive_field(lambda t: torch.zeros(8, 2, 3, 3), x)
    with pytest.raises(LayerError, match="C, h, w"):
        receptive_field(lambda t: t.flatten(1), x)


class Flat(nn.Module):
    """A SimpleConvNet-like model: two convolutions, a flatten + linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = simple_conv_net()
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _batch(model_dtype: torch.dtype = torch.float32, masks: bool = True) -> Batch:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 1, 20, 20, generator=g, dtype=model_dtype)  # Flat: a 4x4 last map
    m = torch.zeros(4, 20, 20, dtype=torch.bool)
    m[:, :3, :3] = True
    return Batch(x, torch.tensor([0, 1, 2, 0]), m if masks else None, 0, 0, 1)


def test_objective_equals_the_hand_composed_loss() -> None:
    model = ConvLinear().double()
    batch = _batch(torch.float64)
    batch = Batch(batch.images[:, :, :3, :3], batch.labels, batch.masks[:, :3, :3], 0, 0, 1)
    loss, logits = contribution_penalty_objective(None, 2.0, layer="conv", field=1)(model, batch)
    acts = model.conv(batch.images)
    z = model.head(acts.flatten(1))
    with torch.no_grad():
        p = torch.softmax(z, 1)
        maps = (acts * ((1 - 3 * p) @ model.head.weight).view(4, 2, 2, 2)).sum(1)
        # masks cover pixels (0..2, 0..2) of a 3x3 image; cell (i, j) of the 2x2 map is the
        # area average over the adaptive pooling window
        cover = F.adaptive_avg_pool2d(batch.masks[:, None].double(), 2)[:, 0]
        expected = F.cross_entropy(z, batch.labels) + 2.0 * (cover * maps).pow(2).sum() / 4
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(logits.detach(), z.detach())


def test_objective_gradient_matches_finite_differences() -> None:
    """The double backward through the head: d(loss)/d(theta) against central differences."""
    model = ConvLinear(act=nn.Softplus()).double()
    batch = _batch(torch.float64)
    batch = Batch(batch.images[:, :, :3, :3], batch.labels, batch.masks[:, :3, :3], 0, 0, 1)
    objective = contribution_penalty_objective(None, 5.0, layer="conv", field=1)
    loss, _ = objective(model, batch)
    params = [model.conv.weight, model.head.weight]
    grads = torch.autograd.grad(loss, params)
    eps = 1e-6
    for p, g in zip(params, grads, strict=True):
        for idx in [(0,) * p.dim(), tuple(s - 1 for s in p.shape)]:
            with torch.no_grad():
                p[idx] += eps
            up = float(objective(model, batch)[0].detach())
            with torch.no_grad():
                p[idx] -= 2 * eps
            down = float(objective(model, batch)[0].detach())
            with torch.no_grad():
                p[idx] += eps
            assert math.isclose(float(g[idx]), (up - down) / (2 * eps), rel_tol=1e-5, abs_tol=1e-8)


def test_objective_default_field_is_measured_and_mask_free_batches_cost_nothing() -> None:
    model = Flat().double()
    batch = _batch(torch.float64)
    ce = F.cross_entropy(model(batch.images), batch.labels).detach()

    def penalty(**options: int | None) -> float:
        objective = contribution_penalty_objective(None, 1.0, layer="features.4", **options)
        return float(objective(model, batch)[0].detach() - ce)

    measured, given, area = penalty(field=None), penalty(field=14), penalty(field=1)
    assert measured == given  # the probe finds SimpleConvNet's field: 5 + 1 + 4 * 2
    assert penalty() == area  # the default: the mask downsampled by area
    assert measured > 0 and area > 0
    assert not math.isclose(measured, area, rel_tol=1e-3)
    empty = Batch(batch.images, batch.labels, torch.zeros_like(batch.masks), 0, 0, 1)
    objective = contribution_penalty_objective(None, 3.0, layer="features.4", field=None)
    loss, logits = objective(model, empty)
    torch.testing.assert_close(loss, F.cross_entropy(logits, batch.labels))


def test_objective_trains_and_with_a_map_penalty_needs_no_masks() -> None:
    model = Flat()
    loss, _ = contribution_penalty_objective("center", 1.0, layer="features.4")(
        model, _batch(masks=False)
    )
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(MissingInputError, match="masks"):
        contribution_penalty_objective(None, 1.0, layer="features.4")(model, _batch(masks=False))
    with pytest.raises(RangeError, match="outputs"):
        contribution_penalty_objective(outputs="logits")
    with pytest.raises(DTypeError, match="penalty"):
        contribution_penalty_objective(10.0)  # type: ignore[arg-type]
