"""A CAM-penalty training run on a real torchvision ResNet-18 adapted to 28 px digits
(conv1 3x3 stride 1, no max-pool, 1 input channel, 10 classes) with a label-tied frame
confound: the penalty and the share of map mass off the center fall, and end below those of
the same model trained without the penalty (same init, same batches)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from xai_feedback.data import confounded_digits
from xai_feedback.hooks import CAMHook
from xai_feedback.losses import CenterPenalty
from xai_feedback.objectives import cam_penalty_objective
from xai_feedback.training import Batch, cross_entropy_objective

STEPS = 8
BATCH = 24
LAMBDA = 10.0
CENTER = slice(6, 22)  # the central 16 x 16 of the 28 x 28 canvas (the digit is in 4..23)


def _small_resnet18() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _measure(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(center penalty of all-class CAMs, share of target-CAM mass outside the center).

    The share is computed independently of the penalty: ReLU'd CAM of the label, upsampled
    to the canvas, mass outside the central square over total mass.
    """
    penalty = CenterPenalty(sigma=0.5)
    with torch.no_grad(), CAMHook(model) as hook:  # train-mode BN: batch statistics
        logits = model(images)
        maps = hook.maps(logits, all_classes=True, method="cam")
    value = float(penalty(maps))
    own = torch.relu(maps[torch.arange(len(labels)), labels])
    up = F.interpolate(own[:, None], size=images.shape[-2:], mode="bilinear")[:, 0]
    total = up.sum(dim=(1, 2)).clamp_min(1e-12)
    center = up[:, CENTER, CENTER].sum(dim=(1, 2))
    return value, float((1 - center / total).mean())


@pytest.mark.slow
def test_cam_penalty_moves_the_maps_off_the_frame() -> None:
    data = confounded_digits("train", "frame", size=2)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data), generator=g)
    train = data.subset(order[: STEPS * BATCH])
    probe = data.subset(order[-64:])

    base = _small_resnet18()
    runs = {"penalty": copy.deepcopy(base), "vanilla": copy.deepcopy(base)}
    objectives = {
        "penalty": cam_penalty_objective(CenterPenalty(sigma=0.5), LAMBDA),
        "vanilla": cross_entropy_objective,
    }
    start = _measure(copy.deepcopy(base).train(), probe.images, probe.labels)
    end = {}
    for name, model in runs.items():
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for step in range(STEPS):
            idx = slice(step * BATCH, (step + 1) * BATCH)
            batch = Batch(train.images[idx], train.labels[idx], train.masks[idx], 0, step, 1)
            loss, _ = objectives[name](model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        end[name] = _measure(model, probe.images, probe.labels)

    (p0, m0), (p1, m1), (pv, mv) = start, end["penalty"], end["vanilla"]
    assert p1 < 0.5 * p0, (p0, p1)  # the penalty falls
    assert m1 < m0, (m0, m1)  # so does the share of map mass off the center
    assert p1 < pv and m1 < mv, (p1, pv, m1, mv)  # and both end below the vanilla run's
