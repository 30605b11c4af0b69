"""scikit-learn's handwritten digits on a 28x28 canvas, clean and with label-tied confounds.

The 1,797 8x8 digits shipped with scikit-learn (values 0-16) are scaled to [0, 1], upscaled
bilinearly to 20x20 and centered on a 28x28 canvas with a 4-pixel margin, as MNIST is. The
margin is where confounds go: a *shortcut* that gives the class away in training and not at
test time, the seeds' "background gives the class away" problem in miniature.

Confound families (gray value ``g`` on the 0-255 scale, stored as ``g / 255``):

- ``"swatch"``: Decoy-MNIST (Ross et al. 2017): an ``s x s`` swatch (default 4) in a randomly
  chosen corner; ``g = 255 - 25 y`` in training, a random level ``255 - 25 r`` at test.
- ``"cdep"``: the CDEP variant (Rieger et al. 2020): 5x5 swatches, test gray ``25 y``.
- ``"frame"``: a border of width ``w`` (default 2) around the canvas; ``g = 255 - 25 y`` in
  training, random at test. A CNN learns this shortcut completely.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from xai_feedback._checks import check_choice, check_int, check_labels, check_shape
from xai_feedback.data._dataset import ImageDataset
from xai_feedback.errors import DTypeError, MissingInputError, RangeError

__all__ = [
    "CANVAS",
    "CONFOUND_DEFAULTS",
    "MARGIN",
    "confound_masks",
    "confounded_digits",
    "load_digits",
]

CANVAS = 28
"""Side of the square canvas, in pixels."""
MARGIN = 4
"""Empty margin around the 20x20 digit, in pixels."""
DIGIT = CANVAS - 2 * MARGIN
TEST_FRACTION = 0.2
SPLIT_SEED = 0

Split = Literal["train", "test"]
DigitFamily = Literal["frame", "swatch", "cdep"]
Rule = Literal["tied", "random", "cdep", "none"]

CONFOUND_DEFAULTS: dict[str, dict[str, object]] = {
    "frame": {"size": 2, "test_rule": "random", "max_size": MARGIN},
    "swatch": {"size": 4, "test_rule": "random", "max_size": CANVAS // 2},
    "cdep": {"size": 5, "test_rule": "cdep", "max_size": CANVAS // 2},
}
"""Default size, default test rule and largest allowed size of each confound family."""

_RULES = ("tied", "random", "cdep", "none")


@lru_cache(maxsize=1)
def _digits_numpy() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load, upscale and split scikit-learn's digits once (read-only arrays)."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    small = torch.as_tensor(bunch.images, dtype=torch.float64).unsqueeze(1) / 16.0
    big = F.interpolate(small, size=(DIGIT, DIGIT), mode="bilinear", align_corners=False)
    canvas = F.pad(big.clamp(0.0, 1.0), (MARGIN,) * 4).numpy()
    labels = np.asarray(bunch.target, dtype=np.int64)
    index = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        index, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    train_idx.sort()
    test_idx.sort()
    arrays = (canvas[train_idx], labels[train_idx], canvas[test_idx], labels[test_idx])
    for array in arrays:
        array.setflags(write=False)
    return arrays


def load_digits(split: Split = "train", *, dtype: torch.dtype = torch.float32) -> ImageDataset:
    """Return scikit-learn's digits as 28x28 images with a fixed stratified train/test split.

    The split (80 % / 20 %, stratified by class, ``random_state=0``) never changes, so every
    benchmark evaluates on the same held-out images.

    Args:
        split: ``"train"`` (1,437 images) or ``"test"`` (360 images).
        dtype: Floating dtype of the images.

    Returns:
        An :class:`ImageDataset` with images in [0, 1] and labels 0-9.

    Shape:
        - images: :math:`(N, 1, 28, 28)`
        - labels: :math:`(N,)`, int64

    Example:
        >>> train = load_digits("train")
        >>> tuple(train.images.shape), tuple(train.labels.shape)
        ((1437, 1, 28, 28), (1437,))
    """
    check_choice(split, "split", ("train", "test"))
    if not isinstance(dtype, torch.dtype):
        raise DTypeError(f"`dtype` must be a torch.dtype, got {type(dtype).__name__}.")
    if not dtype.is_floating_point:
        raise RangeError(f"`dtype` must be a floating-point dtype, got {dtype}.")
    x_train, y_train, x_test, y_test = _digits_numpy()
    images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
    return ImageDataset(
        torch.tensor(images, dtype=dtype), torch.tensor(labels), None, f"digits/{split}"
    )


def confound_masks(
    family: DigitFamily, size: int, corners: torch.Tensor | None = None, canvas: int = CANVAS
) -> torch.Tensor:
    """Boolean masks of where a confound is drawn.

    Args:
        family: ``"frame"``, ``"swatch"`` or ``"cdep"``.
        size: Frame width, or swatch side, in pixels.
        corners: For swatches, the corner of each image (0 top-left, 1 top-right,
            2 bottom-left, 3 bottom-right); ignored for frames.
        canvas: Side of the square canvas.

    Returns:
        ``(H, W)`` for a frame, ``(N, H, W)`` for swatches (one per corner given).
    """
    check_choice(family, "family", CONFOUND_DEFAULTS)
    check_int(canvas, "canvas", minimum=1)
    check_int(size, "size", minimum=1, maximum=canvas)
    rows = torch.arange(canvas)
    if family == "frame":
        dist = torch.minimum(rows, canvas - 1 - rows)
        return torch.minimum(dist[:, None], dist[None, :]) < size
    if corners is None:
        raise MissingInputError("`corners` must be given for swatch confounds, got None.")
    check_shape(corners, "N", "corners")
    check_labels(corners, "corners", 4)
    corners = corners.cpu()
    top = torch.where(corners >= 2, canvas - size, 0)
    left = torch.where(corners % 2 == 1, canvas - size, 0)
    in_rows = (rows[None, :] >= top[:, None]) & (rows[None, :] < top[:, None] + size)
    in_cols = (rows[None, :] >= left[:, None]) & (rows[None, :] < left[:, None] + size)
    return in_rows[:, :, None] & in_cols[:, None, :]


def confounded_digits(
    split: Split = "train",
    family: DigitFamily = "frame",
    *,
    size: int | None = None,
    rule: Rule | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> ImageDataset:
    """Digits with a label-tied confound outside the digit (Decoy-MNIST in miniature).

    The confound's gray value follows ``rule``:

    - ``"tied"``: ``255 - 25 y`` (gives the class away; the training default),
    - ``"random"``: ``255 - 25 r`` with ``r`` uniform in 0-9 (the test default of Ross et al.),
    - ``"cdep"``: ``25 y`` (the CDEP test rule: tied, but to other grays),
    - ``"none"``: no confound drawn (clean images; the masks still say where it would be).

    Training with ``rule="random"`` gives the *oracle*: the same images with no shortcut.

    Args:
        split: ``"train"`` or ``"test"`` (the fixed split of :func:`load_digits`).
        family: ``"frame"``, ``"swatch"`` (Decoy-MNIST) or ``"cdep"``.
        size: Frame width (1-4, so it stays in the margin) or swatch side (1-14).
            Defaults: frame 2, swatch 4, cdep 5.
        rule: Gray rule; default ``"tied"`` for training, the family's test rule for test.
        seed: Seed of the random corners and random grays (non-negative int).
        dtype: Floating dtype of the images.

    Returns:
        An :class:`ImageDataset` whose ``masks`` mark the confound.

    Shape:
        - images: :math:`(N, 1, 28, 28)`
        - masks: :math:`(N, 28, 28)`, bool

    Example:
        >>> train = confounded_digits("train", "frame", size=2)
        >>> gray = train.images[:, 0][train.masks].view(len(train), -1)[:, 0]
        >>> bool(torch.allclose(gray * 255, 255 - 25 * train.labels.float()))
        True
    """
    check_choice(split, "split", ("train", "test"))
    check_choice(family, "family", CONFOUND_DEFAULTS)
    defaults = CONFOUND_DEFAULTS[family]
    if size is None:
        size = int(defaults["size"])  # type: ignore[call-overload]
    check_int(size, "size", minimum=1, maximum=int(defaults["max_size"]))  # type: ignore[call-overload]
    if rule is None:
        rule = "tied" if split == "train" else defaults["test_rule"]  # type: ignore[assignment]
    check_choice(rule, "rule", _RULES)
    check_int(seed, "seed", minimum=0)

    clean = load_digits(split, dtype=dtype)
    n = len(clean)
    # One stream per (seed, split), so train and test draws never coincide.
    generator = torch.Generator().manual_seed(2 * seed + (split == "test"))
    corners = torch.randint(0, 4, (n,), generator=generator)
    random_level = torch.randint(0, 10, (n,), generator=generator)
    if family == "frame":
        masks = confound_masks(family, size).expand(n, CANVAS, CANVAS).clone()
    else:
        masks = confound_masks(family, size, corners)

    y = clean.labels.to(torch.float64)
    gray = {
        "tied": 255.0 - 25.0 * y,
        "random": 255.0 - 25.0 * random_level.to(torch.float64),
        "cdep": 25.0 * y,
    }.get(str(rule))
    images = clean.images
    if gray is not None:
        value = (gray / 255.0).to(dtype)[:, None, None, None]
        images = torch.where(masks[:, None], value, images)
    return ImageDataset(images, clean.labels, masks, f"confounded-{family}{size}-{rule}/{split}")
