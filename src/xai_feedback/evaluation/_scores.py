"""Per-pixel relevance of one attribution source, checked against the images it explains."""

from __future__ import annotations

import torch

from xai_feedback._checks import check_shape
from xai_feedback.errors import DTypeError
from xai_feedback.evaluation._types import AttributionSource
from xai_feedback.functional.masking import attribution_scores

__all__ = ["method_scores"]


def method_scores(
    name: str,
    method: AttributionSource,
    images: torch.Tensor,
    labels: torch.Tensor,
    squared: bool,
    what: str = "attributions",
) -> torch.Tensor:
    """Per-pixel scores ``(N, H, W)`` of one method: given attributions or an explainer's.

    The attributions must match the images' ``N``, ``H`` and ``W``; errors name them
    ``methods[name] <what>``.

    Example:
        >>> x = torch.rand(2, 3, 4, 4)
        >>> method_scores("m", lambda i, l: i, x, torch.zeros(2), squared=False).shape
        torch.Size([2, 4, 4])
    """
    attributions = method(images, labels) if callable(method) else method
    if not isinstance(attributions, torch.Tensor):
        raise DTypeError(
            f"`methods[{name!r}]` must be a tensor or a callable, got {type(method).__name__}."
        )
    n, _, h, w = images.shape
    pattern = "N H W" if attributions.dim() == 3 else "N C H W"
    check_shape(attributions, pattern, f"methods[{name!r}] {what}", N=n, H=h, W=w)
    return attribution_scores(attributions.detach().to(images.device), squared=squared)
