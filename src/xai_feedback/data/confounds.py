"""Label-tied confounds on the digits, differing in where, what, how large, how local.

:func:`confounded_digits` draws one family's *shortcut* on scikit-learn's digits (28x28, see
:func:`~xai_feedback.data.load_digits`) whose value gives the class away in training
(``rule="tied"``) and is random at test (``rule="random"``), with the boolean mask of where it
is (the annotation a user would give). ``rule="none"`` draws nothing (clean images; the masks
still say where the shortcut would be). Decoy-MNIST (Ross et al. 2017) in miniature is
``family="swatch", size=4``.

==================  ====================================================  ===================
family              shortcut (``v``: the label if tied, else random)      kind
==================  ====================================================  ===================
``"frame"``         2 px border, gray ``(255 - 25 v) / 255``               periphery, thin
``"swatch"``        6x6 swatch in a random corner, same gray              corner, small
``"stripe"``        3 px stripe down the left side, same gray             one side
``"center_dot"``    4x4 dot at the center, over the digit, same gray      center
``"background"``    every background pixel (ink < 0.05) at ``0.05 v``     global, faint
``"patch"``         4x4 patch at a random position, same gray             anywhere, non-local
``"uncentered"``     none; digit shrunk to 14x14 at a random position      objects off center
``"none"``          none (the clean digits)                               control
==================  ====================================================  ===================

The center dot is where a center prior must fail: the shortcut sits where the object is.

For ``"uncentered"`` and ``"none"`` the masks are all ``False``; for ``"uncentered"`` the
random positions are part of the images in every split and rule. The shortcut families are
drawn by :func:`~xai_feedback.data.confound_dataset`, which draws them (and ImageNet-W's
watermark) on any image data set, sizes scaled with the image.

Example:
    >>> train = confounded_digits("train", "stripe")
    >>> tuple(train.images.shape), int(train.masks[0].sum())
    ((1437, 1, 28, 28), 84)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from xai_feedback._checks import check_choice, check_int
from xai_feedback.data._dataset import ImageDataset
from xai_feedback.data.digits import CANVAS, MARGIN, load_digits
from xai_feedback.data.shortcuts import SHORTCUT_FAMILIES, confound_dataset

__all__ = ["CONFOUND_FAMILIES", "SHORTCUT_FAMILIES", "confounded_digits"]

CONFOUND_FAMILIES = (*SHORTCUT_FAMILIES, "uncentered", "none")
"""Every family of :func:`confounded_digits`: the shortcuts of
:func:`~xai_feedback.data.confound_dataset` (:data:`SHORTCUT_FAMILIES`), the digits moved off
center, and none."""

Split = Literal["train", "test"]
_RULES = ("tied", "random", "none")
_PATCH = 4
_SMALL = 14


def _uncenter(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shrink each centered 20x20 digit to 14x14 and paste it at a random position."""
    n = images.shape[0]
    digit = images[:, :, MARGIN : CANVAS - MARGIN, MARGIN : CANVAS - MARGIN]
    small = F.interpolate(digit, size=(_SMALL, _SMALL), mode="area")[:, 0]
    top = torch.randint(0, CANVAS - _SMALL + 1, (n,), generator=generator)
    left = torch.randint(0, CANVAS - _SMALL + 1, (n,), generator=generator)
    grid = torch.arange(CANVAS)
    rows = grid[None, :] - top[:, None]  # (N, CANVAS) source row of each canvas row
    cols = grid[None, :] - left[:, None]
    valid = ((rows >= 0) & (rows < _SMALL))[:, :, None] & ((cols >= 0) & (cols < _SMALL))[
        :, None, :
    ]
    r = rows.clamp(0, _SMALL - 1)[:, :, None].expand(n, CANVAS, CANVAS)
    c = cols.clamp(0, _SMALL - 1)[:, None, :].expand(n, CANVAS, CANVAS)
    picked = small[torch.arange(n)[:, None, None], r, c]
    return torch.where(valid, picked, torch.zeros((), dtype=images.dtype)).unsqueeze(1)


def confounded_digits(
    split: Split = "train",
    family: str = "frame",
    *,
    size: int | None = None,
    rule: str | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> ImageDataset:
    """Digits with one confound family (see the module docstring).

    Args:
        split: ``"train"`` or ``"test"`` (the fixed split of :func:`load_digits`).
        family: One of :data:`CONFOUND_FAMILIES`.
        size: Width of the frame or stripe, side of the swatch, dot or patch, in pixels
            (default :data:`~xai_feedback.data.SHORTCUT_SIZES`: frame 2, swatch 6, stripe 3,
            center dot 4, patch 4). Not used by ``"background"``, ``"uncentered"``, ``"none"``.
        rule: ``"tied"`` (level = label), ``"random"`` (level uniform in 0-9: the oracle's
            training data) or ``"none"`` (nothing drawn). Default: ``"tied"`` for training,
            ``"random"`` for test.
        seed: Seed of every random draw (positions, corners, random levels); the same
            ``(split, family, rule, seed)`` always gives the same data, and the rule does not
            change positions or corners.
        dtype: Floating dtype of the images.

    Returns:
        An :class:`~xai_feedback.data.ImageDataset` whose ``masks`` mark the shortcut.

    Shape:
        - images: :math:`(N, 1, 28, 28)` in [0, 1]
        - masks: :math:`(N, 28, 28)`, bool

    Example:
        >>> train = confounded_digits("train", "center_dot")
        >>> dot = train.images[:, 0][train.masks].view(len(train), -1)[:, 0]
        >>> bool(torch.allclose(dot * 255, 255 - 25 * train.labels.float()))
        True
    """
    check_choice(family, "family", CONFOUND_FAMILIES)
    check_choice(split, "split", ("train", "test"))
    if rule is None:
        rule = "tied" if split == "train" else "random"
    check_choice(rule, "rule", _RULES)
    check_int(seed, "seed", minimum=0)
    if size is not None:
        check_int(size, "size", minimum=1, maximum=CANVAS)

    clean = load_digits(split, dtype=dtype)
    sized = f"{family}{size}" if size is not None else family
    name = f"confound-{sized}-{rule}/{split}"
    # one stream per (family, split, seed); the rule does not change positions or corners
    family_id = CONFOUND_FAMILIES.index(family)
    generator = torch.Generator().manual_seed(1_000_003 * seed + 2 * family_id + (split == "test"))
    if family in SHORTCUT_FAMILIES:
        drawn = confound_dataset(
            clean, family, rule=rule, size=size, levels=10, generator=generator
        )
        return ImageDataset(drawn.images, drawn.labels, drawn.masks, name)
    images, n = clean.images, len(clean)
    # the same four draws as confound_dataset's (corner, top, left, random level) come first
    for high in (4, CANVAS - _PATCH + 1, CANVAS - _PATCH + 1, 10):
        torch.randint(0, high, (n,), generator=generator)
    if family == "uncentered":
        images = _uncenter(images, generator)
    masks = torch.zeros(n, CANVAS, CANVAS, dtype=torch.bool)
    return ImageDataset(images, clean.labels, masks, name)
