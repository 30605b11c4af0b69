"""Per-pixel relevance of one attribution source, checked against the images it explains."""

from __future__ import annotations

import torch
from torch import nn

from xai_feedback._checks import (
    check_finite,
    check_labels,
    check_model_input,
    check_nonempty,
    check_shape,
)
from xai_feedback.errors import DTypeError, ShapeError
from xai_feedback.evaluation._types import AttributionSource
from xai_feedback.functional.masking import attribution_scores

__all__ = ["check_evaluation_inputs", "method_scores", "true_class_probability"]


def check_evaluation_inputs(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> None:
    """Check an evaluator's images and target classes (no forward: evaluators count their calls).

    Images non-empty, finite, of the model's dtype and device; integer ``target`` >= 0 (the
    upper bound is checked against the first probabilities, :func:`true_class_probability`).

    Raises:
        ShapeError: An empty batch (the curves would divide by zero).
        DTypeError: Images of another dtype or device than the model; a non-integer ``target``.
        RangeError: Non-finite images; a negative class index (never wrapped).
    """
    check_nonempty(images, "images")
    check_model_input(model, images)
    check_finite(images, "images")
    check_labels(target, "target")


def true_class_probability(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``p[i, target[i]]``, refusing classes beyond the model's ``K`` outputs (never wrapped).

    Example:
        >>> true_class_probability(torch.tensor([[0.2, 0.8]]), torch.tensor([1]))
        tensor([0.8000])
    """
    if p.dim() != 2:
        raise ShapeError(f"`model` must return logits of shape (N, K), got {tuple(p.shape)}.")
    check_labels(target, "target", int(p.shape[1]))
    return p.gather(1, target.view(-1, 1)).squeeze(1)


def method_scores(
    name: str,
    method: AttributionSource,
    images: torch.Tensor,
    target: torch.Tensor,
    squared: bool,
    what: str = "attributions",
) -> torch.Tensor:
    """Per-pixel scores ``(N, H, W)`` of one method: given attributions or an explainer's.

    The attributions must match the images' ``N``, ``H`` and ``W``; errors name them
    ``methods[name] <what>``.

    Example:
        >>> x = torch.rand(2, 3, 4, 4)
        >>> method_scores("m", lambda i, t: i, x, torch.zeros(2), squared=False).shape
        torch.Size([2, 4, 4])
    """
    attributions = method(images, target) if callable(method) else method
    if not isinstance(attributions, torch.Tensor):
        raise DTypeError(
            f"`methods[{name!r}]` must be a tensor or a callable, got {type(method).__name__}."
        )
    n, _, h, w = images.shape
    pattern = "N H W" if attributions.dim() == 3 else "N C H W"
    check_shape(attributions, pattern, f"methods[{name!r}] {what}", N=n, H=h, W=w)
    # NaN would sort first and silently take the top ranks of every removal order
    check_finite(attributions, f"methods[{name!r}] {what}")
    return attribution_scores(attributions.detach().to(images.device), squared=squared)
