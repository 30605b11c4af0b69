r"""Masking kernels shared by proxy attention and the faithfulness evaluators.

One place decides which pixels a map selects (a threshold, or an exact top/bottom fraction)
and what replaces them (zeros, per-image statistics, a data-set mean) or how they are blended.
All kernels are batched, run on the images' device and contain no Python loops over images.
"""

from __future__ import annotations

import torch

from xai_feedback._checks import check_choice, check_floating, check_number, check_shape
from xai_feedback.errors import ShapeError

__all__ = ["FILLS", "apply_mask", "blend", "fill_values", "threshold_mask", "topk_mask"]

FILLS = ("zero", "mean", "max", "min", "dataset_mean")
"""Fill rules understood by :func:`fill_values`."""


def threshold_mask(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """``maps > threshold``, as a boolean mask of the same shape.

    Example:
        >>> threshold_mask(torch.tensor([[[0.2, 0.9]]]), 0.85)
        tensor([[[False,  True]]])
    """
    check_floating(maps, "maps")
    check_number(threshold, "threshold", minimum=0, maximum=1)
    return maps > threshold


def topk_mask(maps: torch.Tensor, fraction: float, *, largest: bool = True) -> torch.Tensor:
    """Select exactly ``round(fraction * H * W)`` pixels of each map: its largest (or smallest).

    Ties are broken by position (a stable sort), so the count is exact for any map.

    Shape:
        - maps: :math:`(B, H, W)`; output: :math:`(B, H, W)` bool

    Example:
        >>> topk_mask(torch.tensor([[[0.1, 0.5], [0.9, 0.3]]]), 0.5)
        tensor([[[False,  True],
                 [ True, False]]])
    """
    dims = check_shape(maps, "B H W", "maps")
    check_floating(maps, "maps")
    check_number(fraction, "fraction", minimum=0, maximum=1)
    n = dims["H"] * dims["W"]
    k = round(fraction * n)
    flat = maps.flatten(1)
    order = torch.sort(flat, dim=1, descending=largest, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=maps.device).expand_as(order))
    return (rank < k).view_as(maps)


def fill_values(
    images: torch.Tensor, fill: str = "zero", dataset_mean: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-image, per-channel replacement values ``(B, C, 1, 1)``.

    ``"zero"``; the image's own ``"mean"``, ``"max"`` or ``"min"`` (over its pixels, per
    channel); or ``"dataset_mean"``, a given per-channel mean ``(C,)``.

    Example:
        >>> fill_values(torch.tensor([[[[0.0, 1.0], [2.0, 5.0]]]]), "mean").flatten()
        tensor([2.])
    """
    dims = check_shape(images, "B C H W", "images")
    check_choice(fill, "fill", FILLS)
    if fill == "zero":
        return torch.zeros(dims["B"], dims["C"], 1, 1, device=images.device, dtype=images.dtype)
    if fill == "dataset_mean":
        if dataset_mean is None:
            raise ShapeError("`dataset_mean` (C,) is required with fill='dataset_mean', got None.")
        check_shape(dataset_mean, "C", "dataset_mean", C=dims["C"])
        mean = dataset_mean.to(device=images.device, dtype=images.dtype)
        return mean.view(1, -1, 1, 1).expand(dims["B"], -1, 1, 1)
    flat = images.flatten(2)
    stat = {"mean": flat.mean(dim=2), "max": flat.amax(dim=2), "min": flat.amin(dim=2)}[fill]
    return stat[:, :, None, None]


def apply_mask(images: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Replace the pixels where ``mask`` (``(B, H, W)``) is true by ``values`` (broadcast).

    Example:
        >>> mask = torch.tensor([[[True, False]]])
        >>> apply_mask(torch.ones(1, 1, 1, 2), mask, torch.zeros(1, 1, 1, 1))
        tensor([[[[0., 1.]]]])
    """
    dims = check_shape(images, "B C H W", "images")
    check_shape(mask, "B H W", "mask", B=dims["B"], H=dims["H"], W=dims["W"])
    return torch.where(mask.unsqueeze(1), values.to(images.dtype), images)


def blend(images: torch.Tensor, maps: torch.Tensor, strength: float) -> torch.Tensor:
    r"""Dim images where the map is high: :math:`(1 - \lambda\, m) \odot x`.

    Example:
        >>> blend(torch.ones(1, 1, 1, 2), torch.tensor([[[0.0, 1.0]]]), 0.3)
        tensor([[[[1.0000, 0.7000]]]])
    """
    dims = check_shape(images, "B C H W", "images")
    check_shape(maps, "B H W", "maps", B=dims["B"], H=dims["H"], W=dims["W"])
    check_number(strength, "strength", minimum=0, maximum=1)
    return (1 - strength * maps.unsqueeze(1)) * images
