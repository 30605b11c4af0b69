"""A small in-memory image data set with labels and optional confound masks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xai_feedback._checks import (
    check_finite,
    check_floating,
    check_int,
    check_labels,
    check_number,
    check_shape,
)
from xai_feedback.errors import DTypeError, RangeError

__all__ = ["ImageDataset", "train_val_split"]


@dataclass(frozen=True)
class ImageDataset:
    """Images, labels and (for confounded data) the masks of the confound, all as tensors.

    Attributes:
        images: Float images in [0, 1].
        labels: Integer class labels.
        masks: ``True`` where a confound was drawn (``None`` for clean data). Annotation-mask
            penalties use them; evaluations use them to measure how much of a map falls on
            the confound.
        name: A short description, e.g. ``"digits/train"``.
        classes: The class names, label ``k`` being ``classes[k]`` (empty when unnamed; the
            readers of :mod:`xai_feedback.data.readers` fill it in).

    Shape:
        - images: :math:`(N, C, H, W)`
        - labels: :math:`(N,)`
        - masks: :math:`(N, H, W)`, bool
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None
    name: str = ""
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        dims = check_shape(self.images, "N C H W", "images")
        check_floating(self.images, "images")
        check_shape(self.labels, "N", "labels", N=dims["N"])
        if not isinstance(self.classes, tuple) or not all(isinstance(c, str) for c in self.classes):
            raise DTypeError(
                f"`classes` must be a tuple of str, got {type(self.classes).__name__} "
                f"({self.classes!r:.80})."
            )
        # integer classes >= 0, below len(classes) when named (reads the labels once)
        check_labels(self.labels, "labels", len(self.classes) or None)
        if self.masks is not None:
            check_shape(self.masks, "N H W", "masks", N=dims["N"], H=dims["H"], W=dims["W"])
        if self.images.device.type != "meta":
            check_finite(self.images, "images")
        if not isinstance(self.name, str):
            raise DTypeError(f"`name` must be a str, got {type(self.name).__name__}.")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes: ``len(classes)`` when named, else one more than the largest label."""
        if self.classes:
            return len(self.classes)
        return int(self.labels.max()) + 1 if len(self) else 0

    def subset(self, indices: torch.Tensor) -> ImageDataset:
        """Return the examples at ``indices`` (a 1-D index or boolean tensor)."""
        masks = None if self.masks is None else self.masks[indices]
        return ImageDataset(
            self.images[indices], self.labels[indices], masks, self.name, self.classes
        )

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> ImageDataset:
        """Move every tensor to ``device``; cast the images to ``dtype`` if given."""
        masks = None if self.masks is None else self.masks.to(device)
        return ImageDataset(
            self.images.to(device=device, dtype=dtype),
            self.labels.to(device),
            masks,
            self.name,
            self.classes,
        )


def train_val_split(
    dataset: ImageDataset, val_fraction: float = 0.2, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """Carve a stratified validation split out of a training set (for choosing hyper-parameters).

    Args:
        dataset: The training set to split.
        val_fraction: Share of each class that goes to the validation split, in (0, 1).
        seed: Seed of the split (deterministic).

    Returns:
        ``(train, val)``: disjoint subsets whose union is ``dataset``.

    Example:
        >>> from xai_feedback.data import load_digits
        >>> train, val = train_val_split(load_digits("train"), 0.2, seed=0)
        >>> len(train) + len(val) == len(load_digits("train"))
        True
    """
    from sklearn.model_selection import train_test_split

    check_number(
        val_fraction, "val_fraction", minimum=0, maximum=1, strict_minimum=True, strict_maximum=True
    )
    check_int(seed, "seed", minimum=0)
    if not isinstance(dataset, ImageDataset):
        raise DTypeError(f"`dataset` must be an ImageDataset, got {type(dataset).__name__}.")
    index = torch.arange(len(dataset))
    try:
        train_idx, val_idx = train_test_split(
            index.numpy(),
            test_size=val_fraction,
            random_state=seed,
            stratify=dataset.labels.cpu().numpy(),
        )
    except ValueError as error:  # too few examples per class for a stratified split
        raise RangeError(
            f"`dataset` ({len(dataset)} examples) cannot be split stratified with "
            f"`val_fraction`={val_fraction}: {error}"
        ) from error
    return (
        dataset.subset(torch.as_tensor(train_idx)),
        dataset.subset(torch.as_tensor(val_idx)),
    )
