r"""Selectivity, deletion and insertion: remove (or reveal) the most relevant patches one by one.

**Selectivity** (Montavon et al. 2018): at each step, explain the *current* image again,
remove the most relevant patch among those not yet removed, and record the accuracy and the
true-class probability; a faithful explanation makes them fall fast. **Deletion** is the same
with the ranking of the original image kept (``recompute=False``); **insertion** (Petsiuk et
al. 2018) starts from the fully removed image and reveals patches in the original ranking.
Patch relevance is the mean of the map over the patch; removed patches never come back. All
images advance together: one batched explanation and one forward per step.

References:
    G. Montavon, W. Samek, K.-R. Müller, "Methods for interpreting and understanding deep
    neural networks", Digital Signal Processing 73 (2018); V. Petsiuk, A. Das, K. Saenko,
    "RISE: Randomized Input Sampling for Explanation of Black-box Models", BMVC 2018.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from xai_feedback._checks import check_choice, check_int, check_shape
from xai_feedback.errors import DTypeError, RangeError
from xai_feedback.evaluation.results import Curves
from xai_feedback.evaluation.road import Attributions, method_scores
from xai_feedback.functional.masking import REMOVALS, remove_pixels

__all__ = ["MODES", "selectivity"]

MODES = ("selectivity", "deletion", "insertion")
"""``selectivity`` recomputes the maps after each removal; the others keep the original ranking."""


def _patch_scores(scores: torch.Tensor, patch: int) -> torch.Tensor:
    return F.avg_pool2d(scores.unsqueeze(1), patch, ceil_mode=True).flatten(1)  # (B, P)


def selectivity(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    methods: Mapping[str, Attributions],
    *,
    mode: str = "selectivity",
    patch: int = 4,
    steps: int | None = None,
    fill: str = "zero",
    squared: bool = False,
    random_baseline: bool = True,
    dataset_mean: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Curves]:
    """Accuracy and true-class probability as patches are removed (or revealed) one per step.

    Args:
        model: The classifier (eval mode during the run; its ``training`` flag is restored).
        images: ``(N, C, H, W)`` on the model's device.
        labels: ``(N,)``.
        methods: ``{name: explain(images, labels)}`` (needed by ``mode="selectivity"``), or
            ``{name: attributions}`` for deletion and insertion.
        mode: ``"selectivity"``, ``"deletion"`` or ``"insertion"``.
        patch: Patch side in pixels (the last row/column of patches may be smaller).
        steps: Steps taken (default: every patch).
        fill: Replacement of removed pixels (:data:`~xai_feedback.functional.masking.REMOVALS`).
        squared: Rank by squared attributions.
        random_baseline: Add a ``"random"`` order (from ``generator``).
        dataset_mean: Per-channel mean for ``fill="dataset_mean"``.
        generator: Random order and imputation noise.

    Returns:
        ``{"accuracy": Curves, "probability": Curves}``; the x axis is the fraction of patches
        removed (revealed for insertion), starting at 0.

    Shape:
        - images: :math:`(N, C, H, W)`; labels: :math:`(N,)`; maps from ``methods``:
          :math:`(N, C, H, W)` or :math:`(N, H, W)`.

    Example:
        >>> from xai_feedback.models import GAPNet
        >>> model = GAPNet(width=4, generator=torch.Generator().manual_seed(0)).eval()
        >>> x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
        >>> out = selectivity(model, x, y, {"intensity": lambda i, l: i}, patch=7)
        >>> fractions = out["accuracy"].fractions  # 16 patches of 7x7, 0 ... 16 removed
        >>> len(fractions), fractions[1], fractions[-1]
        (17, 0.0625, 1.0)
    """
    dims = check_shape(images, "N C H W", "images")
    check_shape(labels, "N", "labels", N=dims["N"])
    check_choice(mode, "mode", MODES)
    check_choice(fill, "fill", REMOVALS)
    check_int(patch, "patch", minimum=1, maximum=min(dims["H"], dims["W"]))
    n, h, w = dims["N"], dims["H"], dims["W"]
    rows, cols = -(-h // patch), -(-w // patch)
    n_patches = rows * cols
    steps = n_patches if steps is None else check_int(steps, "steps", minimum=1, maximum=n_patches)
    if not isinstance(methods, Mapping):
        raise DTypeError(
            f"`methods` must be a mapping name -> explainer, got {type(methods).__name__}."
        )
    if mode == "selectivity":
        for name, method in methods.items():
            if not callable(method):
                raise RangeError(
                    f"mode='selectivity' recomputes the maps: `methods[{name!r}]` must be a "
                    f"callable explain(images, labels), got {type(method).__name__}."
                )
    fractions = [s / n_patches for s in range(steps + 1)]
    out = {
        "accuracy": Curves(mode, "accuracy", fractions),
        "probability": Curves(mode, "true-class probability", fractions),
    }
    all_methods: dict[str, Attributions | None] = {"random": None} if random_baseline else {}
    all_methods.update(methods)
    # pixel -> patch index, to expand patch masks to pixel masks
    patch_of = (torch.arange(h, device=images.device) // patch).view(-1, 1) * cols + (
        torch.arange(w, device=images.device) // patch
    ).view(1, -1)
    was_training = model.training
    model.eval()
    try:
        for name, entry in all_methods.items():
            if entry is None:
                fixed = torch.rand(n, n_patches, generator=generator, device="cpu").to(
                    images.device
                )
            elif mode != "selectivity":
                fixed = _patch_scores(method_scores(name, entry, images, labels, squared), patch)
            removed = torch.zeros(n, n_patches, dtype=torch.bool, device=images.device)
            for step in range(steps + 1):
                pixel_mask = removed.gather(1, patch_of.flatten().expand(n, -1)).view(n, h, w)
                if mode == "insertion":
                    pixel_mask = ~pixel_mask
                if not bool(pixel_mask.any()):
                    current = images
                elif fill in _FROM_KEPT_PIXELS and bool(pixel_mask.all()):
                    current = _mean_images(images, dataset_mean)
                else:
                    current = remove_pixels(
                        images, pixel_mask, fill, dataset_mean=dataset_mean, generator=generator
                    )
                with torch.no_grad():
                    p = model(current).softmax(dim=1)
                x = fractions[step]
                out["accuracy"].add(name, x, float((p.argmax(1) == labels).float().mean()))
                out["probability"].add(name, x, float(p.gather(1, labels.view(-1, 1)).mean()))
                if step == steps:
                    break
                if entry is not None and mode == "selectivity":
                    with torch.enable_grad():
                        ranking = _patch_scores(
                            method_scores(name, entry, current, labels, squared), patch
                        )
                else:
                    ranking = fixed
                ranking = ranking.masked_fill(removed, float("-inf"))
                removed = removed.scatter(1, ranking.argmax(dim=1, keepdim=True), True)
    finally:
        model.train(was_training)
    return out


_FROM_KEPT_PIXELS = ("linear", "noisy_linear", "blur")
"""Fills computed from the kept pixels: with every pixel removed they fall back to the mean."""


def _mean_images(images: torch.Tensor, dataset_mean: torch.Tensor | None) -> torch.Tensor:
    """Images filled with the per-channel mean (``dataset_mean``, else the batch's)."""
    mean = images.mean(dim=(0, 2, 3)) if dataset_mean is None else dataset_mean
    return mean.to(images).view(1, -1, 1, 1).expand_as(images).clone()
