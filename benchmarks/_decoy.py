r"""Decoy-MNIST's shortcut (Ross et al. 2017) drawn as the XIL typology's code draws it.

The library draws this shortcut with
:func:`~xai_feedback.data.confound_dataset` (``family="swatch", size=4, levels=10``: the same
square, corners and gray levels; ``tests/test_bench_decoy_data.py`` checks that the two agree
image by image where their corners do). This copy keeps the authors' order of random draws (two
coins per corner, then the random classes), so the runs ``bench xil`` recorded reproduce.

Ross, Hughes and Doshi-Velez ("Right for the right reasons", IJCAI 2017) made *Decoy-MNIST*:
every image gets a small gray square in one of its four corners, drawn at random, whose gray
level in the training set is a function of the label,

.. math:: g(y) = \frac{255 - s\,y}{255} \quad (s = 25: \text{class } 0 \text{ white},
          \text{ class } 9 \text{ at } 30/255),

and in the test set the level of a class drawn at random, so that a model which learned the
square instead of the object fails there. The XIL typology (Friedrich, Stammer, Schramowski,
Kersting, *Nature Machine Intelligence* 2023) builds *Decoy-FMNIST* the same way on
Fashion-MNIST: a 4 x 4 square, each of the two coordinates of its corner a fair coin, one
square per image, the annotation mask the square.

Here the images are in ``[0, 1]`` (the library's convention), so the level is
:math:`g(y)` above; multiply the images by 255 for the typology's input scale.

Example:
    >>> images = torch.zeros(3, 1, 28, 28); labels = torch.tensor([0, 4, 9])
    >>> data = decoy_dataset(images, labels, tied=True, generator=torch.Generator().manual_seed(0))
    >>> [round(float(data.images[i, 0][data.masks[i]].mean() * 255)) for i in range(3)]
    [255, 155, 30]
    >>> int(data.masks.sum(dim=(1, 2)).min()), int(data.masks.sum(dim=(1, 2)).max())
    (16, 16)
"""

from __future__ import annotations

from typing import Literal, overload

import torch

from xai_feedback._checks import check_floating, check_int, check_labels, check_shape
from xai_feedback.data._dataset import ImageDataset
from xai_feedback.errors import DTypeError, RangeError, ShapeError

__all__ = ["DECOY_SIZE", "DECOY_STEP", "decoy_dataset", "decoy_levels"]

DECOY_SIZE = 4
"""Side of the square in pixels (Ross et al. 2017; the typology's code)."""

DECOY_STEP = 25
"""Gray step per class on the 0..255 scale: class ``y`` is drawn at ``255 - 25 y``."""


def decoy_levels(labels: torch.Tensor, step: int = DECOY_STEP) -> torch.Tensor:
    r"""The square's gray level of each label, in ``[0, 1]``: :math:`(255 - \text{step}\,y) / 255`.

    Args:
        labels: Integer class labels.
        step: Gray step per class on the 0..255 scale.

    Returns:
        Float levels, one per label (float32, on the labels' device).

    Raises:
        DTypeError: ``labels`` is not an integer tensor.
        RangeError: ``step`` is not positive, or a label's level would fall below 0.

    Shape:
        - labels: :math:`(N,)`; output: :math:`(N,)`

    Example:
        >>> decoy_levels(torch.tensor([0, 1, 10])).mul(255).round().tolist()
        [255.0, 230.0, 5.0]
    """
    check_int(step, "step", minimum=1)
    check_labels(labels, "labels")
    levels = (255 - step * labels).to(torch.float32) / 255
    if labels.numel() and int(labels.max()) * step > 255:
        raise RangeError(
            f"`labels` up to {int(labels.max())} with `step`={step} give a gray level below 0 "
            f"(255 - step * label < 0); use a smaller `step`."
        )
    return levels


@overload
def decoy_dataset(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    tied: bool,
    generator: torch.Generator | None = ...,
    size: int = ...,
    step: int = ...,
    num_classes: int | None = ...,
    name: str = ...,
    classes: tuple[str, ...] = ...,
    return_clean: Literal[False] = ...,
) -> ImageDataset: ...


@overload
def decoy_dataset(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    tied: bool,
    generator: torch.Generator | None = ...,
    size: int = ...,
    step: int = ...,
    num_classes: int | None = ...,
    name: str = ...,
    classes: tuple[str, ...] = ...,
    return_clean: Literal[True],
) -> tuple[ImageDataset, ImageDataset]: ...


def decoy_dataset(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    tied: bool,
    generator: torch.Generator | None = None,
    size: int = DECOY_SIZE,
    step: int = DECOY_STEP,
    num_classes: int | None = None,
    name: str = "decoy",
    classes: tuple[str, ...] = (),
    return_clean: bool = False,
) -> ImageDataset | tuple[ImageDataset, ImageDataset]:
    r"""Draw Decoy-MNIST's gray square in a random corner of every image.

    For image :math:`b` with corner :math:`(r_b, c_b)` (two fair coins: top or bottom, left or
    right) and square :math:`M_b` of side ``size`` there, the output is

    .. math:: \tilde x_b = (1 - M_b) \odot x_b + M_b\, g(z_b), \qquad
              g(z) = (255 - \text{step}\, z) / 255,

    with :math:`z_b = y_b` when ``tied`` (the training set: the level gives the label away)
    and :math:`z_b` uniform over the ``num_classes`` classes otherwise (the test set: the
    level says nothing). Every channel gets the same level. The random draws (the corners,
    then the random classes) come from ``generator`` only.

    Args:
        images: Gray (or multi-channel) images in ``[0, 1]``.
        labels: Their integer labels.
        tied: Level of the image's own class (``True``) or of a random class (``False``).
        generator: Random generator of the corners and random classes (reproducible sets).
        size: Side of the square in pixels (4: Ross et al.).
        step: Gray step per class on the 0..255 scale (25: Ross et al.).
        num_classes: Classes the random level is drawn from (default: the largest label + 1).
        name: Name of the returned data set.
        classes: Class names (as :class:`~xai_feedback.data.ImageDataset` takes them).
        return_clean: Also return the images without the square (the same corners as
            ``masks``): the oracle's training set, and the object pixels HINT rewards.

    Returns:
        An :class:`~xai_feedback.data.ImageDataset` with ``masks`` the square; with
        ``return_clean``, ``(decoyed, clean)``, both carrying the same masks.

    Raises:
        ShapeError: ``images`` is not ``(N, C, H, W)``, ``labels`` not ``(N,)``, or the
            square does not fit the image.
        DTypeError: ``images`` is not floating, or ``labels`` not integer.
        RangeError: ``size``, ``step`` or ``num_classes`` not positive, a label at least
            ``num_classes``, or a level below 0.

    Shape:
        - images: :math:`(N, C, H, W)`; labels: :math:`(N,)`
        - output images :math:`(N, C, H, W)`, masks :math:`(N, H, W)` bool

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> data, clean = decoy_dataset(
        ...     torch.rand(5, 1, 28, 28), torch.arange(5), tied=False, generator=g,
        ...     num_classes=10, return_clean=True)
        >>> bool((data.images[~data.masks[:, None]] == clean.images[~data.masks[:, None]]).all())
        True
    """
    dims = check_shape(images, "N C H W", "images")
    check_floating(images, "images")
    check_shape(labels, "N", "labels", N=dims["N"])
    check_labels(labels, "labels")
    check_int(size, "size", minimum=1)
    check_int(step, "step", minimum=1)
    if not isinstance(tied, bool):
        raise DTypeError(f"`tied` must be a bool, got {type(tied).__name__}.")
    height, width = dims["H"], dims["W"]
    if size > min(height, width):
        raise ShapeError(
            f"`size`={size}: the square does not fit images of {height} x {width} pixels."
        )
    n = dims["N"]
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if n else 1
    check_int(num_classes, "num_classes", minimum=1)
    check_labels(labels, "labels", num_classes)
    decoy_levels(torch.tensor([num_classes - 1]), step)  # every level a class can get is >= 0

    device = images.device
    corners = torch.randint(0, 2, (n, 2), generator=generator).to(device)  # 1: bottom / right
    if tied:
        level_class = labels
    else:
        level_class = torch.randint(0, num_classes, (n,), generator=generator).to(device)
    levels = decoy_levels(level_class, step).to(device=device, dtype=images.dtype)

    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    row_in = torch.where(corners[:, :1] == 1, rows >= height - size, rows < size)  # (N, H)
    col_in = torch.where(corners[:, 1:] == 1, cols >= width - size, cols < size)  # (N, W)
    masks = row_in[:, :, None] & col_in[:, None, :]  # (N, H, W)
    out = torch.where(masks[:, None], levels[:, None, None, None], images)

    decoyed = ImageDataset(out, labels, masks, name, classes)
    if not return_clean:
        return decoyed
    return decoyed, ImageDataset(images, labels, masks, f"{name}/clean", classes)
