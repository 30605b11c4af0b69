"""Data sets: embedded digits, readers of downloaded data, label-tied confounds on any images.

scikit-learn's digits ship with scikit-learn (offline); IDX files (MNIST, Fashion-MNIST) and
image folders are read from disk, never downloaded.
"""

from xai_feedback.data._dataset import ImageDataset, train_val_split
from xai_feedback.data.confounds import CONFOUND_FAMILIES, make_confound
from xai_feedback.data.decoy import DECOY_SIZE, DECOY_STEP, decoy_dataset, decoy_levels
from xai_feedback.data.digits import (
    CANVAS,
    CONFOUND_DEFAULTS,
    MARGIN,
    confound_masks,
    confounded_digits,
    load_digits,
)
from xai_feedback.data.readers import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_ENV,
    IMAGE_EXTENSIONS,
    load_fashion_mnist,
    load_idx,
    load_image_folder,
    read_idx,
)
from xai_feedback.data.shortcuts import (
    IMAGE_CONFOUND_FAMILIES,
    SHORTCUT_SIZES,
    WATERMARK_TEXT,
    confound_dataset,
    watermark_alpha,
)

__all__ = [
    "CANVAS",
    "CONFOUND_DEFAULTS",
    "CONFOUND_FAMILIES",
    "DECOY_SIZE",
    "DECOY_STEP",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "IMAGE_CONFOUND_FAMILIES",
    "IMAGE_EXTENSIONS",
    "MARGIN",
    "SHORTCUT_SIZES",
    "WATERMARK_TEXT",
    "ImageDataset",
    "confound_dataset",
    "confound_masks",
    "confounded_digits",
    "decoy_dataset",
    "decoy_levels",
    "load_digits",
    "load_fashion_mnist",
    "load_idx",
    "load_image_folder",
    "make_confound",
    "read_idx",
    "train_val_split",
    "watermark_alpha",
]
