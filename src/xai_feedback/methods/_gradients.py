r"""The one gradient step of every gradient method: target scores, per class, bounded.

Both the CAM kind (``dy/dA`` of a layer's activations) and the relevance kind
(``dy/dA_l`` of each block's attention probabilities) differentiate the summed target scores
:math:`\sum_b y_{b, t_b}` with respect to captured tensors, and compute all classes' maps one
class at a time. This module is that step, written once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from xai_feedback.errors import HookError, RangeError

__all__ = ["ALL_CLASSES_MAX_BYTES", "all_class_maps", "score_gradients"]

ALL_CLASSES_MAX_BYTES = 2**32
"""Default bound (4 GiB) on the gradients all-class maps keep alive (see
:func:`all_class_maps`)."""


def score_gradients(
    logits: torch.Tensor,
    target: torch.Tensor,
    wrt: Sequence[torch.Tensor],
    *,
    create_graph: bool,
    what: str,
) -> list[torch.Tensor]:
    r""":math:`\partial \sum_b y_{b, t_b} / \partial x` for each ``x`` of ``wrt``.

    By ``torch.autograd.grad`` (``retain_graph=True``: the same forward serves several
    classes and the training loss). A tensor the logits do not depend on is an error, found
    from the gradient itself (``allow_unused``), never from torch's message text.

    Args:
        logits: ``(B, K)``.
        target: ``(B,)`` long classes.
        wrt: The captured tensors.
        create_graph: Keep the gradients in the graph (second-order training through them).
        what: The tensors' name in messages (``"the captured output of layer 'x'"``).

    Raises:
        HookError: ``wrt`` or the logits do not require grad, or the logits do not depend on
            a tensor of ``wrt``.

    Example:
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> logits = x * torch.tensor([1.0, 2.0, 3.0])
        >>> score_gradients(logits, torch.tensor([0, 2]), [x], create_graph=False, what="x")[0]
        tensor([[1., 0., 0.],
                [0., 0., 3.]])
    """
    if not all(t.requires_grad for t in wrt):
        raise HookError(
            f"gradients of {what} are needed, but it does not require grad (was the forward "
            "run under torch.no_grad()?)."
        )
    if not logits.requires_grad:
        raise HookError(
            f"the logits do not require grad, so they cannot depend on {what} (computed under "
            "torch.no_grad(), or by another forward?)."
        )
    score = logits.gather(1, target[:, None]).sum()
    grads = torch.autograd.grad(
        score, list(wrt), create_graph=create_graph, retain_graph=True, allow_unused=True
    )
    if any(g is None for g in grads):
        raise HookError(
            f"the logits do not depend on {what} (another hook replaced it, or the logits come "
            "from another forward than the last one inside the `with` block)."
        )
    return [g for g in grads if g is not None]


def all_class_maps(
    logits: torch.Tensor,
    maps_of: Callable[[torch.Tensor], torch.Tensor],
    wrt: Sequence[torch.Tensor],
    *,
    max_bytes: int | None,
) -> torch.Tensor:
    r"""Every class's maps ``(B, K, ...)``, one gradient per class, memory checked first.

    Each class's maps keep that class's gradients alive (in the graph with
    ``create_graph=True``, and as saved tensors of the maps' own graph in any case), so ``K``
    classes cost about :math:`K \sum_x \mathrm{bytes}(x)` over ``wrt``. That estimate is
    checked against ``max_bytes`` before the first backward, instead of failing with an
    allocation error after many.

    Args:
        logits: ``(B, K)``.
        maps_of: ``classes (B,) -> maps (B, ...)``.
        wrt: The tensors each class's gradient is taken of (sizes the estimate).
        max_bytes: The bound; ``None``: no bound.

    Raises:
        RangeError: The estimate exceeds ``max_bytes`` (the message names ``max_bytes``).

    Example:
        >>> logits = torch.randn(2, 3)
        >>> all_class_maps(logits, lambda t: t.float(), [], max_bytes=None)[0]
        tensor([0., 1., 2.])
    """
    b, k = logits.shape
    if max_bytes is not None:
        per_class = sum(t.numel() * t.element_size() for t in wrt)
        if per_class * k > max_bytes:
            raise RangeError(
                f"maps of all {k} classes keep about {per_class * k / 2**20:.1f} MiB of "
                f"gradients ({per_class / 2**20:.2f} MiB per class), more than `max_bytes` = "
                f"{max_bytes / 2**20:.1f} MiB: pass a `target` (one class), fewer images per "
                "batch, or a larger `max_bytes` (None: no bound)."
            )
    classes = [torch.full((b,), c, dtype=torch.long, device=logits.device) for c in range(k)]
    return torch.stack([maps_of(c) for c in classes], dim=1)
