"""Training objectives that add an explanation penalty to the cross-entropy.

Each returns an :data:`~xai_feedback.training.Objective` ``(model, batch) -> (loss, logits)``
for :func:`~xai_feedback.training.fit`; in your own loop, copy the three lines of its body.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xai_feedback.counterexamples import Counterexamples
from xai_feedback.errors import MissingInputError
from xai_feedback.hooks import CAMHook
from xai_feedback.losses import (
    CentrePenalty,
    ConstantSchedule,
    LossSchedule,
    MaskPenalty,
    RRRPenalty,
)
from xai_feedback.methods import get_method
from xai_feedback.training import Batch, Objective

__all__ = ["cam_penalty_objective", "counterexample_objective", "rrr_objective"]


def cam_penalty_objective(
    penalty: CentrePenalty | MaskPenalty,
    schedule: LossSchedule | float = 1.0,
    *,
    method: str = "cam",
    layer: nn.Module | str | None = None,
) -> Objective:
    """Cross-entropy plus a penalty on the model's class activation maps.

    Args:
        penalty: A :class:`~xai_feedback.losses.CentrePenalty` (no annotations) or a
            :class:`~xai_feedback.losses.MaskPenalty` (uses ``batch.masks``).
        schedule: A loss schedule, or a constant penalty weight.
        method: Map method (see :data:`~xai_feedback.hooks.CAM_METHODS`), on the CAM scale
            (for a GAP + linear head, ``"grad_cam"`` and ``"hires_cam"`` then give the same
            penalty as ``"cam"``, so one penalty weight serves all). The maps are signed; the
            penalty's ``signed`` flag decides whether only positive evidence is penalised.
        layer: Layer whose maps are penalised (default: the feature map feeding the global
            pooling, :func:`xai_feedback.layers.resolve_layer`).

    Example:
        >>> from xai_feedback.data import confounded_digits
        >>> from xai_feedback.models import GAPNet
        >>> from xai_feedback.training import fit
        >>> data = confounded_digits("train").subset(torch.arange(64))
        >>> objective = cam_penalty_objective(CentrePenalty(), 1.0)
        >>> _ = fit(GAPNet(width=4), data, epochs=1, objective=objective)
    """
    get_method(method, "cam")
    sched = ConstantSchedule(float(schedule)) if isinstance(schedule, int | float) else schedule
    all_classes = penalty.classes == "all"

    def objective(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        ce_w, pen_w = sched.weights(batch.epoch, batch.total_epochs)
        with CAMHook(model, layer) as hook:
            logits = model(batch.images)
            ce = F.cross_entropy(logits, batch.labels)
            if pen_w == 0:
                return ce_w * ce, logits
            # signed maps: the penalty decides about the sign (``signed=False`` ReLUs them)
            maps = hook.cam(
                logits, batch.labels, method=method, all_classes=all_classes, relu=False
            )
        if isinstance(penalty, MaskPenalty):
            if batch.masks is None:
                raise MissingInputError(
                    "a MaskPenalty needs `masks` in the training data, got None."
                )
            value = penalty(maps, batch.masks, batch.labels)
        else:
            value = penalty(maps, batch.labels)
        return ce_w * ce + pen_w * value, logits

    return objective


def rrr_objective(
    schedule: LossSchedule | float = 1.0, penalty: RRRPenalty | None = None
) -> Objective:
    """Cross-entropy plus the RRR input-gradient penalty on ``batch.masks`` (Ross et al. 2017)."""
    sched = ConstantSchedule(float(schedule)) if isinstance(schedule, int | float) else schedule
    rrr = penalty if penalty is not None else RRRPenalty()

    def objective(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.masks is None:
            raise MissingInputError("RRR needs `masks` in the training data, got None.")
        ce_w, pen_w = sched.weights(batch.epoch, batch.total_epochs)
        images = batch.images.detach().requires_grad_(pen_w != 0)
        logits = model(images)
        ce = F.cross_entropy(logits, batch.labels)
        if pen_w == 0:
            return ce_w * ce, logits
        return ce_w * ce + pen_w * rrr(logits, images, batch.masks), logits

    return objective


def counterexample_objective(augment: Counterexamples | None = None) -> Objective:
    """Cross-entropy on each batch plus its counterexamples (Teso & Kersting 2019).

    Every step appends :class:`~xai_feedback.counterexamples.Counterexamples` of the batch
    (annotated region randomised, label kept) and takes the cross-entropy over all of them;
    the logits returned (for training accuracy) are those of the original images.

    Args:
        augment: The augmentation (default: one copy per image, a random constant fill).

    Example:
        >>> from xai_feedback.data import confounded_digits
        >>> from xai_feedback.models import GAPNet
        >>> from xai_feedback.training import fit
        >>> data = confounded_digits("train").subset(torch.arange(64))
        >>> _ = fit(GAPNet(width=4), data, epochs=1, objective=counterexample_objective())
    """
    aug = augment if augment is not None else Counterexamples()

    def objective(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.masks is None:
            raise MissingInputError("counterexamples need `masks` in the training data, got None.")
        images, labels, _ = aug(batch.images, batch.labels, batch.masks)
        logits = model(images)
        n = int(batch.labels.shape[0])
        head = logits[:n] if aug.keep_original else logits[-n:]
        return F.cross_entropy(logits, labels), head

    return objective
