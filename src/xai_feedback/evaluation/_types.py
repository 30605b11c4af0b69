"""The vocabulary shared by the evaluators: attribution sources, training and evaluation code.

- :data:`ExplainFn`: ``explain(images, target) -> attributions`` (``target``: the ``(N,)``
  class indices to explain, as in :func:`~xai_feedback.attribution.attribute`);
- :data:`AttributionSource`: "a callable or a tensor giving attributions": an
  :data:`ExplainFn`, or the attributions themselves (``(N, C, H, W)`` or ``(N, H, W)``);
- :data:`MethodSpec`: a retraining sweep's method, a source or ``(train, test)`` attributions;
- :data:`TrainFn`, :data:`EvalFn`: what a retraining sweep trains and evaluates with.

Mode names: :data:`~xai_feedback.evaluation.roar.RETRAIN_MODES` (``"roar"``, ``"kar"``),
:data:`~xai_feedback.evaluation.road.ORDERS` (``"morf"``, ``"lerf"``) and
:data:`~xai_feedback.evaluation.selectivity.SELECTIVITY_MODES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import torch
from torch import nn

from xai_feedback.data import ImageDataset

__all__ = ["AttributionSource", "EvalFn", "ExplainFn", "MethodSpec", "TrainFn"]

ExplainFn: TypeAlias = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``explain(images, target) -> attributions`` ``(B, C, H, W)`` or ``(B, H, W)``."""
AttributionSource: TypeAlias = torch.Tensor | ExplainFn
"""A callable or tensor giving attributions: an :data:`ExplainFn` or the attributions."""
MethodSpec: TypeAlias = AttributionSource | tuple[torch.Tensor, torch.Tensor]
"""A sweep's method: an :data:`AttributionSource` (explainer called on each split, or one
tensor for both splits of equal size) or ``(train, test)`` attributions."""
TrainFn: TypeAlias = Callable[[ImageDataset, torch.Generator], nn.Module]
"""``train_fn(data, generator) -> trained model`` (a fresh model every call)."""
EvalFn: TypeAlias = Callable[[nn.Module, ImageDataset], float]
"""``eval_fn(model, data) -> metric`` (top-1 accuracy by default)."""
