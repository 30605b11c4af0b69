r"""Counterexample augmentation (Teso & Kersting 2019): randomize what the user marked irrelevant.

"Explanatory interactive learning" (CAIPI) answers a user's "this region is not a reason" with
*counterexamples*: copies of the training image whose annotated region is randomized while the
label is kept. A shortcut in that region then stops predicting the label, so the model has no
reason to learn it: the data say what a penalty can only ask for.

For an image :math:`x`, its annotation mask :math:`M` (1 where the model must not look) and a
random fill :math:`r`, a counterexample is

.. math:: \tilde x = (1 - M) \odot x + M \odot r ,

with ``r`` one uniform value per image and channel (``fill="constant"``: a random color, the
kind of value a decoy patch or a frame carries) or one uniform value per pixel
(``fill="noise"``), both in ``[low, high]``, or the same region of another image of the batch
(``fill="swap"``: the shortcut as the data draw it, at another image's level; the choice for
a region given by a prior rather than an annotation, see
:func:`~xai_feedback.functional.periphery_mask`).

Example:
    >>> images = torch.zeros(2, 1, 4, 4); masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    >>> masks[:, 0] = True                                  # the top row is a shortcut
    >>> out = counterexamples(images, masks, generator=torch.Generator().manual_seed(0))
    >>> bool((out[:, :, 1:] == 0).all())                    # outside the mask: unchanged
    True
"""

from __future__ import annotations

import torch
from torch import nn

from xai_feedback._checks import (
    check_choice,
    check_floating,
    check_int,
    check_masks,
    check_number,
    check_shape,
)
from xai_feedback.errors import DTypeError, RangeError, ShapeError

__all__ = ["COUNTEREXAMPLE_FILLS", "Counterexamples", "counterexamples", "region_range"]

COUNTEREXAMPLE_FILLS = ("constant", "noise", "swap")
"""``"constant"``: one random value per image and channel; ``"noise"``: one per pixel;
``"swap"``: the region's pixels of another image of the batch (a random permutation)."""


def counterexamples(
    images: torch.Tensor,
    masks: torch.Tensor,
    *,
    copies: int = 1,
    fill: str = "constant",
    low: float = 0.0,
    high: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Copies of ``images`` with the annotated region replaced by random values.

    .. math:: \tilde x_{(r, b)} = (1 - M_b) \odot x_b + M_b \odot u_{(r, b)},
              \qquad u \sim \mathcal U[\text{low}, \text{high}]

    where ``u`` is constant over each image and channel (``fill="constant"``) or drawn per
    pixel (``fill="noise"``); with ``fill="swap"``, :math:`u_{(r, b)} = x_{\pi_r(b)}`, image
    :math:`\pi_r(b) \ne b` of the batch for a random derangement :math:`\pi_r` (``low`` and
    ``high`` unused; a batch of one image is returned unchanged). Copy ``r`` of image ``b``
    is row ``r * B + b`` of the result, so its labels are ``labels.repeat(copies)``.

    Args:
        images: ``(B, C, H, W)`` float images.
        masks: ``(B, H, W)`` annotation masks, boolean or float in [0, 1] (1: randomize;
            fractional values blend).
        copies: Counterexamples per image (>= 1).
        fill: ``"constant"``, ``"noise"`` or ``"swap"`` (:data:`COUNTEREXAMPLE_FILLS`).
        low: Lower bound of the random values.
        high: Upper bound of the random values (> ``low``).
        generator: Random generator (reproducible draws); drawn on ``images``' device.

    Returns:
        ``(copies * B, C, H, W)`` counterexamples, same dtype and device as ``images``;
        not detached from ``images`` (gradients flow through the unmasked pixels).

    Raises:
        ShapeError: ``images`` or ``masks`` of the wrong shape.
        RangeError: ``masks`` neither boolean nor in [0, 1] (NaN, negative, or a 0/255
            mask, which the message says to divide by 255); ``high <= low``.

    Shape:
        - images: :math:`(B, C, H, W)`; masks: :math:`(B, H, W)`
        - output: :math:`(R B, C, H, W)` with ``R = copies``

    Example:
        >>> x = torch.zeros(1, 1, 3, 3); m = torch.zeros(1, 3, 3, dtype=torch.bool)
        >>> m[0, 1, 1] = True
        >>> out = counterexamples(x, m, copies=2, generator=torch.Generator().manual_seed(0))
        >>> out.shape, int((out != 0).sum())
        (torch.Size([2, 1, 3, 3]), 2)
    """
    dims = check_shape(images, "B C H W", "images")
    check_floating(images, "images")
    check_shape(masks, "B H W", "masks", B=dims["B"], H=dims["H"], W=dims["W"])
    check_masks(masks, "masks", sync=False)  # a 0/255 mask would scale the pixels by 255
    check_int(copies, "copies", minimum=1)
    check_choice(fill, "fill", COUNTEREXAMPLE_FILLS)
    low = check_number(low, "low")
    high = check_number(high, "high")
    if not high > low:
        raise RangeError(f"`high` must be greater than `low` ({low}), got {high}.")
    b, c, h, w = dims["B"], dims["C"], dims["H"], dims["W"]
    if fill == "swap":
        values = images[_derangements(copies, b, generator, images.device)]  # (R, B, C, H, W)
    else:
        shape = (copies, b, c, 1, 1) if fill == "constant" else (copies, b, c, h, w)
        u = torch.rand(shape, generator=generator, device=images.device, dtype=images.dtype)
        values = low + (high - low) * u
    m = masks.to(images.dtype)[None, :, None]  # (1, B, 1, H, W)
    out = (1 - m) * images[None] + m * values
    return out.reshape(copies * b, c, h, w)


def _derangements(
    copies: int, b: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """``(copies, b)`` random derangements ``pi_r(i) != i`` (identity for ``b = 1``).

    A random permutation ``p`` and a cyclic shift ``s`` in ``1 .. b - 1``:
    ``pi = p[(p^-1 + s) % b]`` sends each image ``s`` steps along ``p``'s order.
    """
    if b == 1:
        return torch.zeros(copies, 1, dtype=torch.long, device=device)
    perm = torch.stack(
        [torch.randperm(b, generator=generator, device=device) for _ in range(copies)]
    )
    shift = torch.randint(1, b, (copies, 1), generator=generator, device=device)
    inverse = torch.argsort(perm, dim=1)
    return torch.gather(perm, 1, (inverse + shift) % b)


class Counterexamples(nn.Module):
    """Append counterexamples to a batch: the module form of :func:`counterexamples`.

    ``forward(images, labels, masks)`` returns the batch followed by ``copies``
    counterexamples of every image, with their labels and masks, ready for the loss:
    ``(images', labels', masks')`` of length ``(1 + copies) * B``. With ``keep_original=False``
    only the counterexamples are returned.

    Args:
        copies: Counterexamples per image.
        fill: ``"constant"``, ``"noise"`` or ``"swap"``.
        low: Lower bound of the random values.
        high: Upper bound of the random values.
        keep_original: Keep the original images in front of their counterexamples.
        generator: Random generator used by every call (reproducible augmentation).

    Shape:
        - images: :math:`(B, C, H, W)`; labels: :math:`(B,)`; masks: :math:`(B, H, W)`
        - output: :math:`((1 + R) B, C, H, W)`, :math:`((1 + R) B,)`, :math:`((1 + R) B, H, W)`

    Example:
        >>> aug = Counterexamples(copies=2, generator=torch.Generator().manual_seed(0))
        >>> x, y = torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2])
        >>> m = torch.zeros(3, 8, 8, dtype=torch.bool); m[:, :2] = True
        >>> x2, y2, m2 = aug(x, y, m)
        >>> x2.shape[0], y2.tolist()
        (9, [0, 1, 2, 0, 1, 2, 0, 1, 2])
    """

    def __init__(
        self,
        copies: int = 1,
        *,
        fill: str = "constant",
        low: float = 0.0,
        high: float = 1.0,
        keep_original: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.copies = check_int(copies, "copies", minimum=1)
        self.fill = check_choice(fill, "fill", COUNTEREXAMPLE_FILLS)
        self.low = check_number(low, "low")
        self.high = check_number(high, "high")
        if not self.high > self.low:
            raise RangeError(f"`high` must be greater than `low` ({self.low}), got {self.high}.")
        self.keep_original = bool(keep_original)
        self.generator = generator

    def forward(
        self, images: torch.Tensor, target: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the (augmented) images, class indices and masks."""
        dims = check_shape(images, "B C H W", "images")
        check_shape(target, "B", "target", B=dims["B"])
        made = counterexamples(
            images,
            masks,
            copies=self.copies,
            fill=self.fill,
            low=self.low,
            high=self.high,
            generator=self.generator,
        )
        reps = self.copies + int(self.keep_original)
        if self.keep_original:
            made = torch.cat([images, made])
        return made, target.repeat(reps), masks.repeat(reps, 1, 1)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return (
            f"copies={self.copies}, fill={self.fill!r}, low={self.low}, high={self.high}, "
            f"keep_original={self.keep_original}"
        )


def region_range(images: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    """The smallest and largest pixel value inside the annotated regions of a data set.

    Counterexamples should stay images the model could meet: a fill drawn from the range the
    shortcut takes in the training data (``Counterexamples(low=lo, high=hi)``) randomizes
    the shortcut without painting regions brighter or darker than the data ever are (a faint
    background level filled with white hides the digit). Call it once on the training set.

    Args:
        images: ``(N, C, H, W)`` training images.
        masks: ``(N, H, W)`` boolean annotation masks.

    Returns:
        ``(low, high)``; ``high > low`` (widened by 1e-6 when the region is constant).

    Raises:
        ShapeError: If the masks mark no pixel (or do not match the images).
        DTypeError: If the masks are not boolean or the images not floating point.

    Shape:
        - images: :math:`(N, C, H, W)`; masks: :math:`(N, H, W)`
        - output: two Python floats (over every channel of the marked pixels)

    Example:
        >>> x = torch.zeros(2, 1, 4, 4); x[0, 0, 0] = 0.25; x[1, 0, 0] = 0.75
        >>> m = torch.zeros(2, 4, 4, dtype=torch.bool); m[:, 0] = True
        >>> region_range(x, m)
        (0.25, 0.75)
    """
    dims = check_shape(images, "N C H W", "images")
    check_floating(images, "images")
    check_shape(masks, "N H W", "masks", N=dims["N"], H=dims["H"], W=dims["W"])
    if masks.dtype != torch.bool:
        raise DTypeError(f"`masks` must be boolean, got {masks.dtype}.")
    values = images.transpose(0, 1)[:, masks]  # (C, marked pixels)
    if values.numel() == 0:
        raise ShapeError("`masks` must mark at least one pixel, got none.")
    low, high = float(values.min()), float(values.max())
    return (low, high) if high > low else (low, low + 1e-6)
