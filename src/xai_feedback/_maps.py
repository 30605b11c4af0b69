"""What every capture shares: its ``with`` block's exit, and ``maps(...)``'s checks and tail.

:meth:`~xai_feedback.hooks.CAMHook.maps` and :meth:`~xai_feedback.relevance.AttentionCapture.maps`
take the same keywords (``target``, ``all_classes``, ``normalize``, ``size``, ``create_graph``,
``max_bytes``) with the same meaning; the parts that do not depend on the kind are written here
once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any

import torch

from xai_feedback._checks import check_choice, check_shape, check_size
from xai_feedback.functional.cam import NORMALIZATIONS, normalize_maps, resize_maps
from xai_feedback.targets import Target, logits_of, resolve_targets


def map_logits(
    logits: torch.Tensor | Any,
    normalize: str,
    size: tuple[int, int] | None,
    batch: int | None = None,
) -> torch.Tensor:
    """The ``(B, K)`` logits of a request (``.logits`` read from a model output), checked.

    ``normalize`` and ``size`` are checked here, before any gradient is taken; ``batch``, when
    known, is the captured forward's batch size.
    """
    logits = logits_of(logits)
    check_shape(logits, "B K", "logits", B=batch)
    check_choice(normalize, "normalize", NORMALIZATIONS)
    if size is not None:
        check_size(size)
    return logits


def map_classes(target: Target, logits: torch.Tensor, all_classes: bool) -> torch.Tensor | None:
    """The classes ``(B,)`` or class weights ``(B, K)`` of ``target``; ``None``: every class."""
    return None if all_classes else resolve_targets(target, logits, weights=True)


def finish_maps(maps: torch.Tensor, normalize: str, size: tuple[int, int] | None) -> torch.Tensor:
    """Normalize each map, then resize it bilinearly to ``size`` unless ``None``.

    :func:`~xai_feedback.functional.normalize_maps`, then
    :func:`~xai_feedback.functional.resize_maps`.
    """
    maps = normalize_maps(maps, normalize)
    return resize_maps(maps, size) if size is not None else maps


class Capture(ABC):
    """A capture's ``with`` block: leaving it runs :meth:`_close`, also when the block raises.

    :class:`~xai_feedback.hooks.ActivationHook` (and :class:`~xai_feedback.hooks.CAMHook`,
    which extends its ``_close``) and :class:`~xai_feedback.relevance.AttentionCapture`
    remove their hooks and give back every switch they made in ``_close``.
    """

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    @abstractmethod
    def _close(self) -> None:
        """Remove the hooks and restore what ``__enter__`` switched (idempotent)."""
