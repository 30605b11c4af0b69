"""``classes="projected"``: the all-class map penalty from one map of a random mix of classes.

Checked exactly, by enumerating every sign vector: the mean of the projected penalty (and of
its parameter gradient) over the :math:`2^K` sign vectors is the all-class penalty (and its
gradient), for each method linear in the score; the maps of class weights are the weighted
maps; what the estimator does not cover is refused.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from xai_feedback.attribution import attribute
from xai_feedback.errors import DTypeError, RangeError, ShapeError
from xai_feedback.hooks import CAMHook
from xai_feedback.losses import CenterPenalty, MaskPenalty
from xai_feedback.objectives import (
    cam_penalty_objective,
    random_class_signs,
    relevance_penalty_objective,
)
from xai_feedback.training import Batch

K, H = 3, 6


def _model(gap: bool) -> nn.Module:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    if gap:  # CAM needs a GAP + linear head
        return nn.Sequential(
            conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, K)
        )
    # a nonlinear head: dy/dA depends on the image, so a wrong mix would show
    return nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(4 * H * H, K))


def _signs() -> list[torch.Tensor]:
    return [torch.tensor(s) / math.sqrt(K) for s in itertools.product((-1.0, 1.0), repeat=K)]


CASES = [("cam", True, "1"), ("grad_cam", False, "0"), ("hires_cam", False, "0")]


@pytest.mark.parametrize(("method", "gap", "layer"), CASES)
def test_maps_of_class_weights_are_the_weighted_maps(method: str, gap: bool, layer: str) -> None:
    model, x = _model(gap), torch.rand(2, 1, H, H)
    weights = torch.randn(2, K, generator=torch.Generator().manual_seed(1))
    with CAMHook(model, layer) as hook:
        logits = model(x)
        every = hook.maps(logits, method=method, all_classes=True)
        mixed = hook.maps(logits, weights, method=method)
    torch.testing.assert_close(mixed, torch.einsum("bk,bkhw->bhw", weights, every))


def test_grad_cam_pp_of_class_weights_is_not_the_weighted_maps() -> None:
    """Why ``Method.linear`` is False for Grad-CAM++ (its weights use squared gradients)."""
    model, x = _model(False), torch.rand(2, 1, H, H)
    weights = torch.randn(2, K, generator=torch.Generator().manual_seed(1))
    with CAMHook(model, "0") as hook:
        logits = model(x)
        every = hook.maps(logits, method="grad_cam_pp", all_classes=True)
        mixed = hook.maps(logits, weights, method="grad_cam_pp")
    assert not torch.allclose(mixed, torch.einsum("bk,bkhw->bhw", weights, every), atol=1e-3)


@pytest.mark.parametrize(("method", "gap", "layer"), CASES)
@pytest.mark.parametrize("kind", ["center", "mask"])
def test_projected_penalty_is_unbiased_with_an_unbiased_gradient(
    method: str, gap: bool, layer: str, kind: str
) -> None:
    model, x = _model(gap), torch.rand(2, 1, H, H)
    masks = torch.zeros(2, H, H, dtype=torch.bool)
    masks[:, :2] = True
    make = CenterPenalty if kind == "center" else MaskPenalty
    params = list(model.parameters())

    def penalty_and_grads(target: torch.Tensor | None, classes: str):
        with CAMHook(model, layer) as hook:
            logits = model(x)
            maps = hook.maps(logits, target, method=method, all_classes=target is None)
        value = make(classes=classes)(maps, masks=masks)
        got = torch.autograd.grad(value, params, allow_unused=True)
        return value, [
            torch.zeros_like(p) if g is None else g for p, g in zip(params, got, strict=True)
        ]

    exact, exact_grads = penalty_and_grads(None, "all")
    runs = [penalty_and_grads(v.expand(2, K), "projected") for v in _signs()]
    torch.testing.assert_close(torch.stack([v for v, _ in runs]).mean(), exact)
    for i, g in enumerate(exact_grads):
        torch.testing.assert_close(torch.stack([r[1][i] for r in runs]).mean(0), g)
    values = {round(float(v.detach()), 6) for v, _ in runs}
    assert float(exact.detach()) > 0 and len(values) > 1  # a real estimate


def test_the_objective_draws_its_signs_from_the_generator() -> None:
    model, x = _model(False), torch.rand(4, 1, H, H)
    masks = torch.zeros(4, H, H, dtype=torch.bool)
    masks[:, :2] = True
    batch = Batch(x, torch.tensor([0, 1, 2, 0]), masks, 0, 0, 1)

    def loss(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        objective = cam_penalty_objective(
            MaskPenalty(classes="projected"), 10.0, method="grad_cam", layer="0", generator=g
        )
        return objective(model, batch)[0]

    assert torch.equal(loss(0), loss(0)) and not torch.equal(loss(0), loss(1))
    loss(0).backward()
    v = random_class_signs(torch.zeros(4, K), torch.Generator().manual_seed(0))
    assert torch.equal(v.abs(), torch.full((4, K), 1 / math.sqrt(K)))


def test_what_the_estimate_does_not_cover_is_refused() -> None:
    with pytest.raises(RangeError, match="projected"):
        MaskPenalty(classes="projected", signed=False)
    with pytest.raises(RangeError, match="projected"):
        CenterPenalty(classes="projected", normalize="minmax")
    with pytest.raises(RangeError, match="grad_cam_pp"):
        cam_penalty_objective(MaskPenalty(classes="projected"), method="grad_cam_pp")
    with pytest.raises(RangeError, match="projected"):
        relevance_penalty_objective(MaskPenalty(classes="projected"))
    with pytest.raises(ShapeError, match="projected"):
        MaskPenalty(classes="projected")(torch.rand(2, K, H, H), masks=torch.ones(2, H, H))
    model, x = _model(False), torch.rand(2, 1, H, H)
    with CAMHook(model, "0") as hook:
        logits = model(x)
        with pytest.raises(ShapeError, match="target"):
            hook.maps(logits, torch.rand(2, K + 1), method="grad_cam")
        with pytest.raises(RangeError, match="target"):
            hook.maps(logits, torch.full((2, K), float("nan")), method="grad_cam")
    with pytest.raises((DTypeError, ShapeError)):  # class weights are the captures' only
        attribute(model, x, torch.rand(2, K), method="saliency")
