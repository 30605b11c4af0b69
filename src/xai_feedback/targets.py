"""Which class a map explains: the ``target=`` argument of every explanation call.

:data:`Target` is what a user passes (labels, a callable of the logits, or ``None`` for the
predicted class); :func:`resolve_targets` turns it into ``(B,)`` classes checked against the
logits. :class:`~xai_feedback.hooks.CAMHook`,
:class:`~xai_feedback.relevance.AttentionCapture`, :func:`~xai_feedback.attribution.attribute`
and proxy training all resolve targets here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from xai_feedback._checks import check_finite, check_labels, check_shape
from xai_feedback.errors import DTypeError

__all__ = ["Target", "logits_of", "resolve_targets"]

Target = torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None
r"""Labels ``(B,)``, a callable ``logits -> (B,)`` labels, or ``None`` (the predicted class).

The captures' ``maps`` also take class weights: a floating ``(B, K)`` tensor ``w`` asks for
the map of the score :math:`\sum_k w_{bk} y_{bk}` of each image (see
:func:`resolve_targets`)."""


def resolve_targets(target: Target, logits: torch.Tensor, *, weights: bool = False) -> torch.Tensor:
    r"""Turn ``target`` into a ``(B,)`` long tensor of classes, checking length and range.

    With ``weights=True`` a floating ``(B, K)`` tensor is accepted as class weights (checked
    finite, returned on the logits' device and dtype): the explained score of image ``b`` is
    then :math:`\sum_k w_{bk} y_{bk}` (a gradient method differentiates that score; for a
    method linear in it, :attr:`~xai_feedback.methods.Method.linear`, the map is
    :math:`\sum_k w_{bk}` times class ``k``'s map).

    Raises:
        DTypeError: ``target`` is neither a tensor, a callable nor ``None``.
        ShapeError: Wrong number of targets.
        RangeError: A class outside ``[0, K)`` (negative indices are refused, never wrapped).

    Example:
        >>> resolve_targets(None, torch.tensor([[0.1, 0.9], [2.0, 1.0]]))
        tensor([1, 0])
    """
    dims = check_shape(logits, "B K", "logits")
    if target is None:
        return logits.argmax(dim=1)
    if callable(target) and not isinstance(target, torch.Tensor):
        target = target(logits)
    if not isinstance(target, torch.Tensor):
        raise DTypeError(
            f"`target` must be a tensor, a callable or None, got {type(target).__name__}."
        )
    if weights and target.is_floating_point() and target.dim() == 2:
        check_shape(target, "B K", "target", B=dims["B"], K=dims["K"])
        check_finite(target, "target", sync=False)
        return target.to(device=logits.device, dtype=logits.dtype)
    check_shape(target, "B", "target", B=dims["B"])
    # in the training step: no host synchronisation on accelerators (device-side assertion)
    check_labels(target, "target", dims["K"], sync=False)
    return target.to(device=logits.device, dtype=torch.long)


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model's output: the tensor itself, or its ``.logits`` (Hugging Face).

    Raises:
        DTypeError: Neither a tensor nor an object with a tensor ``.logits``.

    Example:
        >>> logits_of(torch.zeros(2, 3)).shape
        torch.Size([2, 3])
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise DTypeError(
        f"`logits` must be a (B, K) tensor or a model output with a `.logits` tensor, got "
        f"{type(output).__name__}."
    )
