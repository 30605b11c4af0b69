"""Objectives: one argument order ``(penalty, schedule)``, one penalty call through the
registry, and one sign rule shared with the hook (the loss of the README's three lines equals
the objective's, for every CAM method)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F

from xai_feedback.data import ImageDataset
from xai_feedback.errors import DTypeError, LayerError, MissingInputError, RangeError
from xai_feedback.hooks import CAMHook
from xai_feedback.losses import (
    PENALTIES,
    CenterPenalty,
    MapPenalty,
    MaskPenalty,
    PhaseSchedule,
    RRRPenalty,
    get_penalty,
    penalty_names,
    register_penalty,
)
from xai_feedback.models import GAPNet
from xai_feedback.objectives import (
    cam_penalty_objective,
    counterexample_objective,
    rrr_counterexample_objective,
    rrr_objective,
)
from xai_feedback.training import Batch, fit


def _batch(epoch: int = 0, masks: bool = True) -> Batch:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 28, 28, generator=g)
    m = torch.zeros(6, 28, 28, dtype=torch.bool)
    m[:, :4] = True
    return Batch(images, torch.tensor([0, 1, 2, 3, 4, 5]), m if masks else None, epoch, 0, 4)


def _model() -> GAPNet:
    return GAPNet(width=4, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["cam", "grad_cam", "hires_cam", "grad_cam_pp"])
@pytest.mark.parametrize("penalty", [CenterPenalty(), CenterPenalty(signed=False), MaskPenalty()])
def test_the_objective_and_the_readme_lines_give_the_same_loss(
    method: str, penalty: MapPenalty
) -> None:
    model, batch = _model(), _batch()
    loss, logits = cam_penalty_objective(penalty, 10.0, method=method)(model, batch)
    with CAMHook(model) as hook:  # the README's three lines, hook defaults
        readme_logits = model(batch.images)
        maps = hook.maps(readme_logits, batch.labels, method=method, all_classes=True)
    by_hand = F.cross_entropy(readme_logits, batch.labels) + 10.0 * penalty(
        maps, target=batch.labels, masks=batch.masks
    )
    torch.testing.assert_close(logits, readme_logits)
    torch.testing.assert_close(loss, by_hand)


def test_the_penalty_sees_signed_maps() -> None:
    # signed (the hook's default) and ReLU'd maps give different center penalties here
    model, batch = _model(), _batch()
    with CAMHook(model) as hook:
        logits = model(batch.images)
        signed = hook.maps(logits, method="grad_cam", all_classes=True)
        relu = hook.maps(logits, method="grad_cam", all_classes=True, relu=True)
    assert bool((signed < 0).any())
    penalty = CenterPenalty()
    loss, _ = cam_penalty_objective(penalty, 1.0, method="grad_cam")(model, batch)
    ce = F.cross_entropy(logits, batch.labels)
    torch.testing.assert_close(loss, ce + penalty(signed))
    assert not torch.allclose(loss, ce + penalty(relu))


def test_penalty_registry_builds_by_name_and_takes_new_penalties() -> None:
    assert penalty_names()[:2] == ("center", "mask")
    assert isinstance(get_penalty("center", sigma=0.4), CenterPenalty)
    assert get_penalty("center", sigma=0.4).sigma == 0.4
    with pytest.raises(RangeError, match="center"):
        get_penalty("centre")

    @register_penalty
    class TopRow(MapPenalty):
        """Evidence in the maps' top row (a user's own penalty)."""

        name: ClassVar[str] = "test_top_row"
        classes = "all"

        def forward(
            self,
            maps: torch.Tensor,
            *,
            target: torch.Tensor | None = None,
            masks: torch.Tensor | None = None,
        ) -> torch.Tensor:
            return maps[..., 0, :].pow(2).mean()

    try:
        with pytest.raises(RangeError, match="already registered"):
            register_penalty(TopRow)
        model, batch = _model(), _batch()
        loss, logits = cam_penalty_objective("test_top_row", 2.0)(model, batch)
        with CAMHook(model) as hook:
            maps = hook.maps(model(batch.images), all_classes=True)
        want = F.cross_entropy(logits, batch.labels) + 2.0 * maps[..., 0, :].pow(2).mean()
        torch.testing.assert_close(loss, want)
    finally:
        PENALTIES.pop("test_top_row")


def test_every_penalty_is_called_the_same_way() -> None:
    maps = torch.randn(2, 3, 7, 7)
    masks = torch.zeros(2, 28, 28, dtype=torch.bool)
    masks[:, :, :4] = True
    target = torch.tensor([0, 2])
    for name in penalty_names():
        penalty = get_penalty(name)
        value = penalty(maps, target=target, masks=masks)
        assert value.dim() == 0 and bool(torch.isfinite(value))
    with pytest.raises(MissingInputError, match="masks"):
        MaskPenalty()(maps, target=target)
    with pytest.raises(MissingInputError, match="masks"):  # through the objective too
        cam_penalty_objective("mask", 1.0)(_model(), _batch(masks=False))


@pytest.mark.parametrize(
    "call",
    [
        lambda: cam_penalty_objective(10.0, CenterPenalty()),  # type: ignore[arg-type]
        lambda: rrr_objective(10.0),  # type: ignore[arg-type]
        lambda: rrr_objective(RRRPenalty(), "10"),  # type: ignore[arg-type]
        lambda: rrr_counterexample_objective(1000.0),  # type: ignore[arg-type]
        lambda: cam_penalty_objective(CenterPenalty(), True),
        lambda: counterexample_objective(3),  # type: ignore[arg-type]
    ],
)
def test_misplaced_arguments_are_refused_with_the_rule(call: Any) -> None:
    with pytest.raises(DTypeError) as info:
        call()
    message = str(info.value)
    assert "penalty" in message or "schedule" in message or "augment" in message


def test_schedules_switch_the_penalty_by_epoch() -> None:
    model, penalty = _model(), CenterPenalty()
    objective = cam_penalty_objective(penalty, PhaseSchedule([(1, 1.0, 0.0), (1, 0.5, 3.0)]))
    first, logits = objective(model, _batch(epoch=0))
    torch.testing.assert_close(first, F.cross_entropy(logits, _batch().labels))
    second, logits = objective(model, _batch(epoch=1))
    with CAMHook(model) as hook:
        maps = hook.maps(model(_batch().images), all_classes=True)
    want = 0.5 * F.cross_entropy(logits, _batch().labels) + 3.0 * penalty(maps)
    torch.testing.assert_close(second, want)


def test_objectives_train_through_fit() -> None:
    batch = _batch()
    data = ImageDataset(batch.images, batch.labels, batch.masks)
    for objective in (
        cam_penalty_objective("center", 1.0, method="grad_cam"),
        rrr_objective(None, 10.0),
        rrr_counterexample_objective(None, 10.0),
        counterexample_objective(),
    ):
        history = fit(_model(), data, epochs=1, batch_size=3, objective=objective)
        assert len(history.loss) == 1 and history.loss[0] == history.loss[0]  # finite, not NaN


class _DropoutHead(torch.nn.Module):
    """Conv features, GAP, then dropout before the linear head (torchvision's MobileNet head)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU())
        self.classifier = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def test_cam_objective_trains_a_model_with_dropout_before_the_head() -> None:
    # CAM's head check cannot hold with dropout active; the objective checks it in eval mode
    torch.manual_seed(0)
    model = _DropoutHead()
    model.train()
    batch = _batch()
    with CAMHook(model) as hook:  # the hook's own check, in training mode, refuses it
        logits = model(batch.images)
        with pytest.raises(LayerError, match="dropout"):
            hook.maps(logits, method="cam")
    torch.manual_seed(1)
    loss, _ = cam_penalty_objective("center", 1.0)(model, batch)
    assert model.training and model.classifier[0].training  # flags kept
    grads = torch.autograd.grad(loss, model.features[0].weight)
    assert torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0
    # by hand: the same dropout draw for the cross-entropy, CAM from the head's weights
    torch.manual_seed(1)
    ce = F.cross_entropy(model(batch.images), batch.labels)
    acts = model.features(batch.images)
    maps = torch.einsum("kc,bchw->bkhw", model.classifier[1].weight, acts)
    expected = ce + CenterPenalty()(maps, target=batch.labels)
    torch.testing.assert_close(loss, expected)


def test_cam_objective_still_refuses_a_layer_that_does_not_feed_the_head() -> None:
    model = _DropoutHead()
    model.train()
    with pytest.raises(LayerError, match="global-average-pool"):
        cam_penalty_objective("center", 1.0, layer="features.0")(model, _batch())
    assert model.training and model.classifier[0].training
