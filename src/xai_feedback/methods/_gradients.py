r"""The one gradient step of every gradient method: target scores, per class, bounded.

Both the CAM kind (``dy/dA`` of a layer's activations) and the relevance kind
(``dy/dA_l`` of each block's attention probabilities) differentiate the summed target scores
:math:`\sum_b y_{b, t_b}` with respect to captured tensors, and compute all classes' maps one
class chunk at a time (one batched backward per chunk). This module is that step, written
once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from xai_feedback.errors import HookError, RangeError

__all__ = ["ALL_CLASSES_MAX_BYTES", "CLASS_CHUNK", "all_class_maps", "score_gradients"]

ALL_CLASSES_MAX_BYTES = 2**32
"""Default bound (4 GiB) on the gradients all-class maps keep alive (see
:func:`all_class_maps`)."""

CLASS_CHUNK = 1
"""Default number of classes whose gradients :func:`all_class_maps` takes in one batched
backward."""


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

    ``target`` of shape ``(J, B)`` takes ``J`` such gradients in one batched backward
    (``is_grads_batched``: the vector-Jacobian product vectorized over the ``J`` one-hot
    rows), each gradient then ``(J, *x.shape)``. A floating ``(B, K)`` ``target`` holds class
    weights: the gradient of :math:`\sum_{b,k} w_{bk} y_{bk}`.

    Args:
        logits: ``(B, K)``.
        target: ``(B,)`` long classes, ``(J, B)`` for ``J`` gradients at once, or
            ``(B, K)`` floating class weights.
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
        >>> score_gradients(logits, torch.tensor([[0, 0], [1, 1]]), [x], create_graph=False,
        ...                 what="x")[0][1]
        tensor([[0., 2., 0.],
                [0., 2., 0.]])
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
    weighted = target.is_floating_point()  # (B, K) class weights: one weighted score
    rows = target if weighted else F.one_hot(target, int(logits.shape[1])).to(logits.dtype)
    grads = torch.autograd.grad(
        logits,
        list(wrt),
        grad_outputs=rows,
        create_graph=create_graph,
        retain_graph=True,
        allow_unused=True,
        is_grads_batched=target.dim() == 2 and not weighted,
    )
    if any(g is None for g in grads):
        raise HookError(
            f"the logits do not depend on {what} (another hook replaced it, or the logits come "
            "from another forward than the last one inside the `with` block)."
        )
    return [g for g in grads if g is not None]


def all_class_maps(
    logits: torch.Tensor,
    maps_of: Callable[[torch.Tensor, list[torch.Tensor] | None], torch.Tensor],
    wrt: Sequence[torch.Tensor],
    *,
    create_graph: bool,
    what: str,
    max_bytes: int | None,
    class_chunk: int = CLASS_CHUNK,
) -> torch.Tensor:
    r"""Every class's maps ``(B, K, ...)``: the gradients of ``class_chunk`` classes per backward.

    The gradients of the classes ``c, ..., c + J - 1`` (``J = class_chunk``) are one batched
    backward (:func:`score_gradients` with ``(J, B)`` targets), so ``K`` classes take
    :math:`\lceil K / J \rceil` backwards; ``maps_of(classes, grads)`` turns one class's
    gradients into its maps. Each class's maps keep that class's gradients alive (in the
    graph with ``create_graph=True``, and as saved tensors of the maps' own graph in any
    case), so ``K`` classes cost about :math:`K \sum_x \mathrm{bytes}(x)` over ``wrt``, and
    one batched backward :math:`J` times one backward's working memory. The first estimate is
    checked against ``max_bytes`` before the first backward, instead of failing with an
    allocation error after many.

    Args:
        logits: ``(B, K)``.
        maps_of: ``(classes (B,), gradients of wrt or None) -> maps (B, ...)``.
        wrt: The tensors each class's gradient is taken of (none: ``maps_of`` gets
            ``None``).
        create_graph: Keep the gradients in the graph.
        what: The tensors' name in messages.
        max_bytes: The bound; ``None``: no bound.
        class_chunk: Classes per batched backward (1: one backward per class).

    Raises:
        RangeError: The estimate exceeds ``max_bytes`` (the message names ``max_bytes``),
            or ``class_chunk`` < 1.

    Example:
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> logits = x * torch.tensor([1.0, 2.0, 3.0])
        >>> maps = all_class_maps(logits, lambda c, g: g[0], [x], create_graph=False,
        ...                       what="x", max_bytes=None, class_chunk=2)
        >>> maps[0]
        tensor([[1., 0., 0.],
                [0., 2., 0.],
                [0., 0., 3.]])
    """
    b, k = logits.shape
    if isinstance(class_chunk, bool) or not isinstance(class_chunk, int) or class_chunk < 1:
        raise RangeError(f"`class_chunk` must be an int >= 1, got {class_chunk!r}.")
    if max_bytes is not None:
        per_class = sum(t.numel() * t.element_size() for t in wrt)
        if per_class * k > max_bytes:
            raise RangeError(
                f"maps of all {k} classes keep about {per_class * k / 2**20:.1f} MiB of "
                f"gradients ({per_class / 2**20:.2f} MiB per class), more than `max_bytes` = "
                f"{max_bytes / 2**20:.1f} MiB: pass a `target` (one class), fewer images per "
                "batch, or a larger `max_bytes` (None: no bound)."
            )
    classes = torch.arange(k, device=logits.device)[:, None].expand(k, b)
    maps = []
    for chunk in torch.split(classes, class_chunk):
        grads = (
            score_gradients(logits, chunk, wrt, create_graph=create_graph, what=what)
            if wrt
            else None
        )
        for j, target in enumerate(chunk):
            maps.append(maps_of(target, None if grads is None else [g[j] for g in grads]))
    return torch.stack(maps, dim=1)
