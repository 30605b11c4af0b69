r"""Masking kernels shared by proxy attention and the faithfulness evaluators.

One place decides which pixels a map selects (a threshold, or an exact top/bottom fraction)
and what replaces them (zeros, per-image statistics, a data-set mean) or how they are blended.
All kernels are batched, run on the images' device and contain no Python loops over images.

**One fill vocabulary.** Every ``fill=`` argument of the library (proxy attention, ROAD,
ROAR/KAR, selectivity, counterexamples) names what replaces the selected pixels from one set
of names, none of which means two things:

- :data:`FILLS`, a statistic per image and channel: ``"zero"``, ``"mean"``, ``"max"``,
  ``"min"``, ``"dataset_mean"`` (:func:`fill_values`; proxy attention, and the evaluators);
- the imputations of :data:`REMOVALS`: ``"blur"``, ``"linear"``, ``"noisy_linear"``
  (:func:`remove_pixels`; the evaluators, where a constant fill leaks the removed shape);
- the random fills of :data:`~xai_feedback.counterexamples.COUNTEREXAMPLE_FILLS`:
  ``"constant"`` (one random value per image and channel), ``"noise"`` (one per pixel),
  ``"swap"`` (another image's pixels); drawn with a ``generator``, they augment data rather
  than remove evidence.

Each function accepts the subset that is meaningful for it and names that subset in its
error.
"""

from __future__ import annotations

import torch

from xai_feedback._checks import (
    check_choice,
    check_finite,
    check_floating,
    check_number,
    check_shape,
)
from xai_feedback.errors import MissingInputError, RangeError, ShapeError
from xai_feedback.functional.imputation import (
    blur_images,
    linear_imputation,
    noisy_linear_imputation,
)

__all__ = [
    "FILLS",
    "REMOVALS",
    "apply_mask",
    "attribution_scores",
    "blend",
    "fill_values",
    "rank_mask",
    "remove_pixels",
    "threshold_mask",
    "topk_mask",
]

FILLS = ("zero", "mean", "max", "min", "dataset_mean")
"""Fill rules understood by :func:`fill_values`."""

REMOVALS = (*FILLS, "blur", "linear", "noisy_linear")
"""Replacement rules of :func:`remove_pixels`: the fills plus blur and (noisy) linear imputation."""


def threshold_mask(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """``maps > threshold``, as a boolean mask of the same shape.

    Example:
        >>> threshold_mask(torch.tensor([[[0.2, 0.9]]]), 0.85)
        tensor([[[False,  True]]])
    """
    check_floating(maps, "maps")
    check_number(threshold, "threshold", minimum=0, maximum=1)
    check_finite(maps, "maps")  # NaN > t is False: a NaN map would silently select nothing
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
    check_finite(maps, "maps")  # NaN sorts first: it would silently take the top ranks
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
    check_floating(images, "images")
    check_choice(fill, "fill", FILLS)
    if fill == "zero":
        return torch.zeros(dims["B"], dims["C"], 1, 1, device=images.device, dtype=images.dtype)
    if fill == "dataset_mean":
        if dataset_mean is None:
            raise MissingInputError(
                "`dataset_mean` (C,) is required with fill='dataset_mean', got None."
            )
        check_shape(dataset_mean, "C", "dataset_mean", C=dims["C"])
        check_floating(dataset_mean, "dataset_mean")
        check_finite(dataset_mean, "dataset_mean")
        mean = dataset_mean.to(device=images.device, dtype=images.dtype)
        return mean.view(1, -1, 1, 1).expand(dims["B"], -1, 1, 1)
    check_finite(images, "images")  # a NaN pixel would make the whole fill NaN
    if dims["H"] * dims["W"] == 0:
        raise ShapeError(
            f"`images` must have at least one pixel for fill={fill!r}, "
            f"got shape {tuple(images.shape)}."
        )
    flat = images.flatten(2)
    if fill == "mean":  # divided by the peak first: a sum of 1e37s must not overflow
        peak = flat.abs().amax(dim=2, keepdim=True)
        peak = torch.where(peak > 0, peak, torch.ones_like(peak))
        plain = flat.mean(dim=2)  # the plain mean wherever the sum does not overflow
        stat = torch.where(plain.isfinite(), plain, (flat / peak).mean(dim=2) * peak.squeeze(2))
    else:
        stat = flat.amax(dim=2) if fill == "max" else flat.amin(dim=2)
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


def attribution_scores(attributions: torch.Tensor, *, squared: bool = False) -> torch.Tensor:
    r"""One relevance score per pixel: the attribution summed over channels, or its square.

    ``(B, C, H, W)`` attributions become :math:`\sum_c a_c` (or :math:`\sum_c a_c^2` with
    ``squared``, Hooker et al.'s default); ``(B, H, W)`` maps pass through (or are squared).

    Shape:
        - attributions: :math:`(B, C, H, W)` or :math:`(B, H, W)`; output :math:`(B, H, W)`.

    Example:
        >>> attribution_scores(torch.tensor([[[[1.0, -2.0]], [[1.0, 0.0]]]]), squared=True)
        tensor([[[2., 4.]]])
    """
    check_floating(attributions, "attributions")
    if attributions.dim() != 3:
        check_shape(attributions, "B C H W", "attributions")
    check_finite(attributions, "attributions")  # NaN would silently win the ranking
    if attributions.dim() == 3:
        return attributions**2 if squared else attributions
    check_shape(attributions, "B C H W", "attributions")
    return (attributions**2).sum(dim=1) if squared else attributions.sum(dim=1)


def rank_mask(
    attributions: torch.Tensor,
    fraction: float,
    *,
    most_relevant: bool = True,
    squared: bool = False,
) -> torch.Tensor:
    """Select exactly ``round(fraction * H * W)`` pixels of each image by attribution rank.

    The most relevant pixels (ROAR, MoRF) or the least relevant (KAR, LeRF), ranked by
    :func:`attribution_scores`; ties broken by position (:func:`topk_mask`).

    Raises:
        RangeError: ``fraction`` outside (0, 1).

    Shape:
        - attributions: :math:`(B, C, H, W)` or :math:`(B, H, W)`; output :math:`(B, H, W)` bool.

    Example:
        >>> rank_mask(torch.tensor([[[0.1, 0.5], [0.9, 0.3]]]), 0.25, most_relevant=False)
        tensor([[[ True, False],
                 [False, False]]])
    """
    check_number(
        fraction, "fraction", minimum=0, maximum=1, strict_minimum=True, strict_maximum=True
    )
    scores = attribution_scores(attributions, squared=squared)
    return topk_mask(scores, fraction, largest=most_relevant)


def remove_pixels(
    images: torch.Tensor,
    mask: torch.Tensor,
    fill: str = "dataset_mean",
    *,
    dataset_mean: torch.Tensor | None = None,
    noise: float = 0.01,
    sigma: float = 2.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Replace the pixels where ``mask`` is true.

    ``fill`` is one of :data:`FILLS` (a constant per image and channel, see
    :func:`fill_values`), ``"blur"`` (the Gaussian-blurred image, ``sigma``), ``"linear"``
    (ROAD's linear imputation) or ``"noisy_linear"`` (plus noise of std ``noise``).

    Shape:
        - images: :math:`(B, C, H, W)`; mask: :math:`(B, H, W)` bool; output as images.

    Example:
        >>> x = torch.tensor([[[[1.0, 0.0, 3.0]]]])
        >>> m = torch.tensor([[[False, True, False]]])
        >>> remove_pixels(x, m, "dataset_mean", dataset_mean=torch.tensor([0.5]))
        tensor([[[[1.0000, 0.5000, 3.0000]]]])
    """
    check_choice(fill, "fill", REMOVALS)
    dims = check_shape(images, "B C H W", "images")
    check_floating(images, "images")
    check_shape(mask, "B H W", "mask", B=dims["B"], H=dims["H"], W=dims["W"])
    if mask.dtype != torch.bool:
        raise RangeError(f"`mask` must be a boolean tensor (True = removed), got {mask.dtype}.")
    check_finite(images, "images")
    if fill == "linear":
        return linear_imputation(images, mask)
    if fill == "noisy_linear":
        return noisy_linear_imputation(images, mask, noise, generator=generator)
    if fill == "blur":
        return apply_mask(images, mask, blur_images(images, sigma))
    return apply_mask(images, mask, fill_values(images, fill, dataset_mean))
