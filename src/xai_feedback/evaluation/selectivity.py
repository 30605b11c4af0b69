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
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xai_feedback._checks import check_choice, check_int, check_shape
from xai_feedback._modes import eval_mode
from xai_feedback.errors import DTypeError, MissingInputError, RangeError
from xai_feedback.evaluation._scores import (
    check_evaluation_inputs,
    method_scores,
    true_class_probability,
)
from xai_feedback.evaluation._types import AttributionSource
from xai_feedback.evaluation.results import Curves
from xai_feedback.functional.masking import REMOVALS, remove_pixels

__all__ = ["SELECTIVITY_MODES", "selectivity"]

SELECTIVITY_MODES = ("selectivity", "deletion", "insertion")
"""``selectivity`` recomputes the maps after each removal; the others keep the original ranking."""

_FROM_KEPT_PIXELS = ("linear", "noisy_linear", "blur")
"""Fills computed from the kept pixels: with every pixel removed they fall back to the mean."""


def _patch_scores(scores: torch.Tensor, patch: int) -> torch.Tensor:
    return F.avg_pool2d(scores.unsqueeze(1), patch, ceil_mode=True).flatten(1)  # (B, P)


def _mean_images(images: torch.Tensor, dataset_mean: torch.Tensor | None) -> torch.Tensor:
    """Images filled with the per-channel mean (``dataset_mean``, else the batch's)."""
    mean = images.mean(dim=(0, 2, 3)) if dataset_mean is None else dataset_mean
    return mean.to(images).view(1, -1, 1, 1).expand_as(images).clone()


@dataclass(frozen=True)
class _Settings:
    """What :func:`selectivity` was asked for (``steps=None``: every patch)."""

    mode: str
    patch: int
    steps: int | None
    fill: str
    squared: bool
    dataset_mean: torch.Tensor | None
    generator: torch.Generator | None


@dataclass(frozen=True)
class _Walk:
    """One selectivity / deletion / insertion run: the model, the images and the settings."""

    model: nn.Module
    images: torch.Tensor
    target: torch.Tensor
    mode: str
    patch: int
    steps: int
    fill: str
    squared: bool
    dataset_mean: torch.Tensor | None
    generator: torch.Generator | None
    patch_of: torch.Tensor  # (H, W): patch index of every pixel
    n_patches: int

    def pixel_mask(self, removed: torch.Tensor) -> torch.Tensor:
        """``(N, H, W)`` pixels to remove, from the ``(N, P)`` removed (revealed) patches."""
        n, (h, w) = removed.shape[0], self.patch_of.shape
        mask = removed.gather(1, self.patch_of.flatten().expand(n, -1)).view(n, h, w)
        return ~mask if self.mode == "insertion" else mask

    def current(self, removed: torch.Tensor) -> torch.Tensor:
        """The images with the removed patches filled."""
        mask = self.pixel_mask(removed)
        if not bool(mask.any()):
            return self.images
        if self.fill in _FROM_KEPT_PIXELS and bool(mask.all()):
            return _mean_images(self.images, self.dataset_mean)
        return remove_pixels(
            self.images, mask, self.fill, dataset_mean=self.dataset_mean, generator=self.generator
        )

    def fixed_ranking(self, name: str, entry: AttributionSource | None) -> torch.Tensor | None:
        """Patch scores ``(N, P)`` used at every step (``None``: recomputed each step)."""
        if entry is None:
            n = self.images.shape[0]
            return torch.rand(n, self.n_patches, generator=self.generator, device="cpu").to(
                self.images.device
            )
        if self.mode == "selectivity":
            return None
        scores = method_scores(name, entry, self.images, self.target, self.squared)
        return _patch_scores(scores, self.patch)

    def ranking(
        self,
        name: str,
        entry: AttributionSource | None,
        fixed: torch.Tensor | None,
        current: torch.Tensor,
    ) -> torch.Tensor:
        """Patch scores for the next step: the fixed ones or a new map of ``current``."""
        if fixed is not None:
            return fixed
        if entry is None:
            raise MissingInputError(f"method {name!r} has neither a fixed order nor a source.")
        with torch.enable_grad():
            scores = method_scores(name, entry, current, self.target, self.squared)
        return _patch_scores(scores, self.patch)

    def run(self, name: str, entry: AttributionSource | None, out: dict[str, Curves]) -> None:
        """Walk ``steps`` steps for one method, recording accuracy and probability."""
        fractions = out["accuracy"].fractions
        fixed = self.fixed_ranking(name, entry)
        n = self.images.shape[0]
        removed = torch.zeros(n, self.n_patches, dtype=torch.bool, device=self.images.device)
        for step in range(self.steps + 1):
            current = self.current(removed)
            with torch.no_grad():
                p = self.model(current).softmax(dim=1)
            x, y = fractions[step], self.target
            out["accuracy"].add(name, x, float((p.argmax(1) == y).float().mean()))
            out["probability"].add(name, x, float(true_class_probability(p, y).mean()))
            if step == self.steps:
                break
            ranking = self.ranking(name, entry, fixed, current).masked_fill(removed, float("-inf"))
            removed = removed.scatter(1, ranking.argmax(dim=1, keepdim=True), True)


def _make_walk(
    model: nn.Module, images: torch.Tensor, target: torch.Tensor, settings: _Settings
) -> _Walk:
    """Check the inputs and the patch grid; the walk over every patch (or ``steps``)."""
    dims = check_shape(images, "N C H W", "images")
    check_shape(target, "N", "target", N=dims["N"])
    h, w, patch = dims["H"], dims["W"], settings.patch
    check_int(patch, "patch", minimum=1, maximum=min(h, w))
    n_patches = -(-h // patch) * -(-w // patch)
    steps = settings.steps
    steps = n_patches if steps is None else check_int(steps, "steps", minimum=1, maximum=n_patches)
    check_evaluation_inputs(model, images, target)
    s = settings
    return _Walk(
        model,
        images,
        target,
        s.mode,
        patch,
        steps,
        s.fill,
        s.squared,
        s.dataset_mean,
        s.generator,
        _patch_index(h, w, patch, images.device),
        n_patches,
    )


def _check_methods(methods: Any, mode: str) -> None:
    if not isinstance(methods, Mapping):
        raise DTypeError(
            f"`methods` must be a mapping name -> explainer, got {type(methods).__name__}."
        )
    if mode != "selectivity":
        return
    for name, method in methods.items():
        if not callable(method):
            raise RangeError(
                f"mode='selectivity' recomputes the maps: `methods[{name!r}]` must be a "
                f"callable explain(images, target), got {type(method).__name__}."
            )


def _patch_index(h: int, w: int, patch: int, device: torch.device) -> torch.Tensor:
    """``(H, W)`` patch index of every pixel (patches numbered row by row)."""
    cols = -(-w // patch)
    rows = torch.arange(h, device=device) // patch
    return rows.view(-1, 1) * cols + (torch.arange(w, device=device) // patch).view(1, -1)


def selectivity(
    model: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    methods: Mapping[str, AttributionSource],
    *,
    mode: str = "selectivity",
    patch: int = 4,
    steps: int | None = None,
    fill: str = "zero",
    squared: bool = True,
    random_baseline: bool = True,
    dataset_mean: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Curves]:
    """Accuracy and true-class probability as patches are removed (or revealed) one per step.

    Args:
        model: The classifier (eval mode during the run; its ``training`` flag is restored).
        images: ``(N, C, H, W)`` on the model's device.
        target: ``(N,)`` true class indices: the class each image is scored on, and the
            class an explainer in ``methods`` is asked to explain.
        methods: ``{name: explain(images, target)}`` (needed by ``mode="selectivity"``), or
            ``{name: attributions}`` for deletion and insertion.
        mode: ``"selectivity"``, ``"deletion"`` or ``"insertion"``.
        patch: Patch side in pixels (the last row/column of patches may be smaller).
        steps: Steps taken (default: every patch).
        fill: Replacement of removed pixels (:data:`~xai_feedback.functional.masking.REMOVALS`).
        squared: Rank by the magnitude of the attribution (squares summed over channels;
            default, as in :func:`~xai_feedback.evaluation.road`); with ``False`` by the
            signed channel sum (channels of opposite sign cancel).
        random_baseline: Add a ``"random"`` order (from ``generator``).
        dataset_mean: Per-channel mean for ``fill="dataset_mean"``.
        generator: Random order and imputation noise.

    Returns:
        ``{"accuracy": Curves, "probability": Curves}``; the x axis is the fraction of patches
        removed (revealed for insertion), starting at 0.

    Shape:
        - images: :math:`(N, C, H, W)`; target: :math:`(N,)`; maps from ``methods``:
          :math:`(N, C, H, W)` or :math:`(N, H, W)`.

    Example:
        >>> from xai_feedback.models import GAPNet
        >>> model = GAPNet(width=4, generator=torch.Generator().manual_seed(0)).eval()
        >>> x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
        >>> out = selectivity(model, x, y, {"intensity": lambda i, t: i}, patch=7)
        >>> fractions = out["accuracy"].fractions  # 16 patches of 7x7, 0 ... 16 removed
        >>> len(fractions), fractions[1], fractions[-1]
        (17, 0.0625, 1.0)
    """
    check_choice(mode, "mode", SELECTIVITY_MODES)
    check_choice(fill, "fill", REMOVALS)
    _check_methods(methods, mode)
    settings = _Settings(mode, patch, steps, fill, squared, dataset_mean, generator)
    walk = _make_walk(model, images, target, settings)
    fractions = [s / walk.n_patches for s in range(walk.steps + 1)]
    out = {
        "accuracy": Curves(mode, "accuracy", fractions),
        "probability": Curves(mode, "true-class probability", fractions),
    }
    all_methods: dict[str, AttributionSource | None] = {"random": None} if random_baseline else {}
    all_methods.update(methods)
    with eval_mode(model):
        for name, entry in all_methods.items():
            walk.run(name, entry, out)
    return out
