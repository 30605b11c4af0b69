"""Embedded, offline data sets: scikit-learn's digits, clean and with label-tied confounds."""

from xai_feedback.data._dataset import ImageDataset, train_val_split
from xai_feedback.data.confounds import CONFOUND_FAMILIES, make_confound
from xai_feedback.data.digits import (
    CANVAS,
    CONFOUND_DEFAULTS,
    MARGIN,
    confound_masks,
    confounded_digits,
    load_digits,
)

__all__ = [
    "CANVAS",
    "CONFOUND_DEFAULTS",
    "CONFOUND_FAMILIES",
    "MARGIN",
    "ImageDataset",
    "confound_masks",
    "confounded_digits",
    "load_digits",
    "make_confound",
    "train_val_split",
]
