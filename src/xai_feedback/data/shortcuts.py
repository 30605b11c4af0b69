"""Label-tied shortcuts drawn on any image data set: gray or RGB, any size, with their masks.

:func:`confound_dataset` draws one family of the confound battery of
:mod:`xai_feedback.data.confounds` on an arbitrary :class:`~xai_feedback.data.ImageDataset`
(Fashion-MNIST, an image folder of photos), or ImageNet-W's watermark. Sizes are those of the
28-pixel digits scaled with the shorter image side (a 2 px frame on 28 px is a 16 px frame on
224 px); at 28 px the digits' battery is reproduced exactly
(:func:`~xai_feedback.data.confounded_digits` is built on this function).

The *level* ``v`` of an image is its label (``rule="tied"``: the shortcut gives the class
away), a uniform random level (``"random"``: the shortcut says nothing, the oracle's training
data and the test data), or nothing is drawn (``"none"``); ``L`` levels, by default one per
class.

==================  ===================================================================
family              shortcut at level ``v`` (``s``: a step so that ``L`` levels fit)
==================  ===================================================================
``"frame"``         border, gray ``(255 - s v) / 255`` (``s = 25`` up to 10 levels)
``"swatch"``        square in a random corner, same gray
``"stripe"``        stripe down the left side, same gray
``"center_dot"``    square at the center, same gray
``"patch"``         square at a random position, same gray
``"background"``    every background pixel (all channels below ``threshold``) set to
                    ``s v`` (``s = 0.05`` up to 10 levels): for dark-background data
                    (digits, Fashion-MNIST, objects on black); a photo has few such pixels
``"watermark"``     ImageNet-W's watermark (Li et al. 2023), white, at opacity
                    ``opacity (L - v) / L``: on every image, the label in its opacity
``"none"``          nothing (the data unchanged; empty masks)
==================  ===================================================================

The gray is the same in every channel. The watermark is the one ImageNet-W pastes on
ImageNet's validation images (package ``imagenet-w``, transform ``AddWatermark``): the text
``"捷径捷径捷径"`` in Source Han Serif SC ExtraLight, font size 36 at 224 px (else the side
divided by 6.22), at 1 % of the width and 40 % of the height, white, opacity 0.5. ImageNet-W
tests whether a model predicts "carton" when it sees it; here its opacity is tied to the label
instead (class 0 at ImageNet-W's opacity 0.5, class ``L - 1`` at ``0.5 / L``), so it is a
shortcut for every class, like the battery's gray levels, and the masks are its pixels
(where its rendered alpha is nonzero). Only the package's font file is used (``pip install
--no-deps imagenet-w==1.0.0``: the package itself imports torchvision), and Pillow renders it.

Example:
    >>> from xai_feedback.data import ImageDataset
    >>> photos = ImageDataset(torch.rand(4, 3, 56, 40), torch.tensor([0, 1, 2, 3]))
    >>> out = confound_dataset(photos, "frame", generator=torch.Generator().manual_seed(0))
    >>> int(out.masks[0, :, 0].sum()), tuple(out.images.shape)  # a 3 px frame at 40 px
    (56, (4, 3, 56, 40))
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from xai_feedback._checks import check_choice, check_int, check_number
from xai_feedback.data._dataset import ImageDataset
from xai_feedback.errors import DTypeError, MissingDataError, RangeError

__all__ = [
    "IMAGE_CONFOUND_FAMILIES",
    "SHORTCUT_FAMILIES",
    "SHORTCUT_SIZES",
    "WATERMARK_TEXT",
    "confound_dataset",
    "watermark_alpha",
]

SHORTCUT_FAMILIES = ("frame", "swatch", "stripe", "center_dot", "background", "patch")
"""The label-tied shortcuts drawn on any image set (and on the digits by ``confounded_digits``)."""

IMAGE_CONFOUND_FAMILIES = (*SHORTCUT_FAMILIES, "watermark", "none")
"""Every family of :func:`confound_dataset`."""
SHORTCUT_SIZES = {"frame": 2, "swatch": 6, "stripe": 3, "center_dot": 4, "patch": 4}
"""Size in pixels of each family's shortcut on a 28-pixel image (frame and stripe width,
square side); scaled with the shorter image side."""
WATERMARK_TEXT = "捷径捷径捷径"
"""ImageNet-W's watermark text ("shortcut" in Chinese, three times)."""

_RULES = ("tied", "random", "none")
_REFERENCE = 28
_FONT = "SourceHanSerifSC-ExtraLight.otf"
# ImageNet-W's font sizes (AddWatermark); other sides use int(side / 6.22)
_FONT_SIZES = {224: 36, 384: 62, 512: 82, 518: 84}
_WATERMARK_OPACITY = 0.5
_WATERMARK_XY = (0.01, 0.4)


def _font_path() -> Path:
    """ImageNet-W's font file, found without importing the package (which needs torchvision)."""
    spec = importlib.util.find_spec("imagenet_w")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the watermark family needs ImageNet-W's font: pip install --no-deps "
            "imagenet-w==1.0.0 (only its font file is used; its own requirements pull "
            "torchvision)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "fonts" / _FONT
    if not path.is_file():
        raise MissingDataError(
            f"the watermark family needs ImageNet-W's font file, got no {path}; reinstall "
            "imagenet-w==1.0.0."
        )
    return path


@lru_cache(maxsize=16)
def _watermark_numpy(height: int, width: int) -> np.ndarray:
    """The watermark's alpha at opacity 1 on an ``height x width`` image, uint8 (read-only)."""
    from xai_feedback.data.readers import _require_pillow

    _require_pillow()
    from PIL import Image, ImageDraw, ImageFont

    side = min(height, width)
    font = ImageFont.truetype(str(_font_path()), max(1, _FONT_SIZES.get(side, int(side / 6.22))))
    layer = Image.new("RGBA", (width, height), (255, 255, 255, 0))
    xy = (_WATERMARK_XY[0] * width, _WATERMARK_XY[1] * height)
    ImageDraw.Draw(layer).text(xy, WATERMARK_TEXT, fill=(255, 255, 255, 255), font=font)
    alpha: np.ndarray = np.asarray(layer)[..., 3].copy()
    alpha.setflags(write=False)
    return alpha


def watermark_alpha(
    height: int,
    width: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """ImageNet-W's watermark as an alpha map in [0, 1] (its coverage of each pixel).

    Pasting the watermark at opacity ``o`` on an image ``x`` in [0, 1] is
    ``x + o * alpha * (1 - x)`` (white text alpha-composited over the image, as
    ImageNet-W's ``AddWatermark`` does in 8 bits). Needs Pillow and ImageNet-W's font
    (``pip install --no-deps imagenet-w==1.0.0``).

    Args:
        height: Image height in pixels.
        width: Image width in pixels.
        dtype: Floating dtype of the result.
        device: Device of the result.

    Returns:
        The alpha map, 0 where the watermark does not touch the image.

    Shape:
        - output: :math:`(H, W)`

    Example:
        >>> alpha = watermark_alpha(224, 224)  # doctest: +SKIP
        >>> bool(alpha.max() == 1), bool(alpha[:80].max() == 0)  # doctest: +SKIP
        (True, True)
    """
    check_int(height, "height", minimum=1)
    check_int(width, "width", minimum=1)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DTypeError(f"`dtype` must be a floating-point torch.dtype, got {dtype!r}.")
    alpha = torch.from_numpy(_watermark_numpy(height, width).copy())
    return alpha.to(device=device, dtype=dtype) / 255


def _scaled(family: str, height: int, width: int) -> int:
    """The family's 28-pixel size scaled with the shorter side (at least 1 pixel)."""
    return max(1, round(SHORTCUT_SIZES[family] * min(height, width) / _REFERENCE))


@dataclass(frozen=True)
class _Placement:
    """Where each image's shortcut may go: its geometry and the positions drawn for it."""

    images: torch.Tensor
    side: int
    corner: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    threshold: float

    @property
    def size(self) -> tuple[int, int, int]:
        n, _, height, width = (int(d) for d in self.images.shape)
        return n, height, width


def _boxes(
    top: torch.Tensor, left: torch.Tensor, side: int, height: int, width: int
) -> torch.Tensor:
    """``(N, H, W)`` masks of ``side x side`` squares with the given top-left corners."""
    rows = torch.arange(height, device=top.device)
    cols = torch.arange(width, device=top.device)
    in_rows = (rows[None, :] >= top[:, None]) & (rows[None, :] < top[:, None] + side)
    in_cols = (cols[None, :] >= left[:, None]) & (cols[None, :] < left[:, None] + side)
    return in_rows[:, :, None] & in_cols[:, None, :]


def _frame(p: _Placement) -> torch.Tensor:
    """A border ``side`` pixels wide."""
    n, height, width = p.size
    rows = torch.arange(height, device=p.images.device)
    cols = torch.arange(width, device=p.images.device)
    dist_r = torch.minimum(rows, height - 1 - rows)
    dist_c = torch.minimum(cols, width - 1 - cols)
    return (torch.minimum(dist_r[:, None], dist_c[None, :]) < p.side).expand(n, -1, -1)


def _swatch(p: _Placement) -> torch.Tensor:
    """A square in the drawn corner (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right)."""
    _, height, width = p.size
    top = torch.where(p.corner >= 2, height - p.side, 0)
    left = torch.where(p.corner % 2 == 1, width - p.side, 0)
    return _boxes(top, left, p.side, height, width)


def _stripe(p: _Placement) -> torch.Tensor:
    """A stripe ``side`` pixels wide down the left side."""
    n, height, width = p.size
    cols = torch.arange(width, device=p.images.device)
    return (cols < p.side)[None, None, :].expand(n, height, -1)


def _center_dot(p: _Placement) -> torch.Tensor:
    """A square at the center."""
    n, height, width = p.size
    top = torch.full((n,), (height - p.side) // 2, device=p.images.device)
    left = torch.full((n,), (width - p.side) // 2, device=p.images.device)
    return _boxes(top, left, p.side, height, width)


def _patch(p: _Placement) -> torch.Tensor:
    """A square at the drawn position."""
    _, height, width = p.size
    return _boxes(p.top, p.left, p.side, height, width)


def _background(p: _Placement) -> torch.Tensor:
    """Every pixel whose channels are all below ``threshold``."""
    return p.images.amax(dim=1) < p.threshold


def _watermark(p: _Placement) -> torch.Tensor:
    """The pixels ImageNet-W's watermark touches."""
    n, height, width = p.size
    return (watermark_alpha(height, width, device=p.images.device) > 0).expand(n, -1, -1)


def _nothing(p: _Placement) -> torch.Tensor:
    """No pixel."""
    n, height, width = p.size
    return torch.zeros(n, height, width, dtype=torch.bool, device=p.images.device)


_MASKS: dict[str, Callable[[_Placement], torch.Tensor]] = {
    "frame": _frame,
    "swatch": _swatch,
    "stripe": _stripe,
    "center_dot": _center_dot,
    "background": _background,
    "patch": _patch,
    "watermark": _watermark,
    "none": _nothing,
}
"""Each family's mask: the one place a family's geometry is written."""


def _gray_level(level: torch.Tensor, family: str, levels: int) -> torch.Tensor:
    """The gray of each level: ``(255 - s v) / 255``, or ``s v`` for the background."""
    if family == "background":
        return (0.05 if levels <= 10 else 0.45 / (levels - 1)) * level
    return (255.0 - (25.0 if levels <= 10 else 250.0 / (levels - 1)) * level) / 255.0


def _draw(
    images: torch.Tensor,
    masks: torch.Tensor,
    level: torch.Tensor,
    family: str,
    levels: int,
    opacity: float | None,
) -> torch.Tensor:
    """Paint (or, for the watermark, composite) each image's level over its mask."""
    level = level.to(torch.float64)
    if family == "watermark":
        alpha = watermark_alpha(*images.shape[-2:], dtype=images.dtype, device=images.device)
        strength = (_WATERMARK_OPACITY if opacity is None else opacity) * (levels - level)
        a = (strength / levels).to(images.dtype)[:, None, None, None] * alpha
        return images + a * (1 - images)
    fill = _gray_level(level, family, levels).to(images.dtype)[:, None, None, None]
    if opacity is not None and opacity < 1:
        fill = (1 - opacity) * images + opacity * fill
    return torch.where(masks[:, None], fill, images)


def _check_arguments(
    data: ImageDataset,
    family: str,
    rule: str,
    size: int | None,
    levels: int | None,
    generator: torch.Generator | None,
) -> int:
    """Check ``confound_dataset``'s arguments; returns the number of levels."""
    if not isinstance(data, ImageDataset):
        raise DTypeError(f"`data` must be an ImageDataset, got {type(data).__name__}.")
    check_choice(family, "family", IMAGE_CONFOUND_FAMILIES)
    check_choice(rule, "rule", _RULES)
    height, width = (int(d) for d in data.images.shape[-2:])
    if size is not None:
        check_int(size, "size", minimum=1, maximum=min(height, width))
    if levels is None:
        levels = max(2, data.num_classes)
    check_int(levels, "levels", minimum=2)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise DTypeError(f"`generator` must be a torch.Generator, got {type(generator).__name__}.")
    if rule == "tied" and len(data) and int(data.labels.max()) >= levels:
        raise RangeError(
            f"`levels` must be above the largest label for rule='tied', got {levels} for "
            f"labels up to {int(data.labels.max())}."
        )
    return levels


def confound_dataset(
    data: ImageDataset,
    family: str,
    *,
    rule: str = "tied",
    size: int | None = None,
    opacity: float | None = None,
    levels: int | None = None,
    threshold: float = 0.05,
    generator: torch.Generator | None = None,
) -> ImageDataset:
    """Draw one family's label-tied shortcut on any image data set (see the module docstring).

    Args:
        data: The images (any number of channels, any size) and labels. Its masks, if any,
            are replaced by the shortcut's.
        family: One of :data:`IMAGE_CONFOUND_FAMILIES`.
        rule: ``"tied"`` (level = label: the shortcut gives the class away), ``"random"``
            (a uniform random level per image: the oracle's training data, and test data)
            or ``"none"`` (nothing drawn; the masks still mark where the shortcut would be).
        size: Width of the frame or stripe, side of the swatch, dot or patch, in pixels
            (1 to the shorter side). Default: :data:`SHORTCUT_SIZES` scaled with the shorter
            image side. Not used by ``"background"``, ``"watermark"`` and ``"none"``.
        opacity: Weight of the shortcut over the image, in (0, 1]: the gray families and the
            background blend ``(1 - opacity) x + opacity g`` (default 1: painted over); the
            watermark's opacity at level 0 (default 0.5, ImageNet-W's).
        levels: Number of levels ``L`` (>= 2, more than the largest label when tied).
            Default: the number of classes of ``data`` (at least 2).
        threshold: ``"background"`` marks the pixels whose every channel is below it.
        generator: Random generator of the corners, positions and random levels (drawn on
            its device, in this order, whatever the family and rule; the same generator state
            gives the same positions for every rule).

    Returns:
        An :class:`~xai_feedback.data.ImageDataset` with the same labels and classes, its
        images on ``data``'s device and dtype, ``masks`` marking the shortcut.

    Raises:
        RangeError: An unknown family or rule, a size larger than the image, ``levels`` not
            above the largest tied label, an opacity outside (0, 1].
        ImportError: ``"watermark"`` without Pillow or ImageNet-W's font.

    Shape:
        - data.images: :math:`(N, C, H, W)`
        - output images: :math:`(N, C, H, W)`; masks: :math:`(N, H, W)`, bool

    Example:
        >>> from xai_feedback.data import ImageDataset
        >>> data = ImageDataset(torch.zeros(2, 3, 64, 64), torch.tensor([0, 9]))
        >>> out = confound_dataset(data, "center_dot", levels=10)
        >>> out.images[:, :, 32, 32]  # gray (255 - 25 v) / 255 in every channel
        tensor([[1.0000, 1.0000, 1.0000],
                [0.1176, 0.1176, 0.1176]])
    """
    levels = _check_arguments(data, family, rule, size, levels, generator)
    if opacity is not None:
        opacity = check_number(opacity, "opacity", minimum=0, maximum=1, strict_minimum=True)
    threshold = check_number(threshold, "threshold")
    images, device = data.images, data.images.device
    n, _, height, width = (int(d) for d in images.shape)
    side = 0  # the shortcut's size in pixels, for the families that have one
    if family in SHORTCUT_SIZES:
        side = size if size is not None else _scaled(family, height, width)
    patch = side if family == "patch" else _scaled("patch", height, width)
    # every family draws the same stream, so positions do not depend on the family or rule
    draw_device = generator.device if generator is not None else torch.device("cpu")

    def draw(high: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=generator, device=draw_device).to(device)

    corner = draw(4)
    top, left = draw(height - patch + 1), draw(width - patch + 1)
    random_level = draw(levels)
    placement = _Placement(images, side, corner, top, left, threshold)
    masks = _MASKS[family](placement).contiguous()
    if family != "none" and rule != "none":
        level = data.labels if rule == "tied" else random_level
        images = _draw(images, masks, level, family, levels, opacity)
    name = f"{data.name}+{family}-{rule}" if data.name else f"{family}-{rule}"
    return ImageDataset(images, data.labels, masks, name, data.classes)
