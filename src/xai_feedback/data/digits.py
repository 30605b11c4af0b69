"""scikit-learn's handwritten digits on a 28x28 canvas.

The 1,797 8x8 digits shipped with scikit-learn (values 0-16) are scaled to [0, 1], upscaled
bilinearly to 20x20 and centered on a 28x28 canvas with a 4-pixel margin, as MNIST is. The
margin is where confounds go (:func:`~xai_feedback.data.confounded_digits`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from xai_feedback._checks import check_choice
from xai_feedback.data._dataset import ImageDataset
from xai_feedback.errors import DTypeError, RangeError

__all__ = [
    "CANVAS",
    "MARGIN",
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
