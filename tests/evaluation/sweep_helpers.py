"""Module-level train functions for the sweep tests (picklable for process executors)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
from torch import nn

from xai_feedback.data import ImageDataset


class MeanClassifier(nn.Module):
    """Nearest class mean: trains in milliseconds, and really depends on the kept pixels."""

    def __init__(self, means: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("means", means)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(x.flatten(1), self.means.flatten(1))


def train_means(data: ImageDataset, generator: torch.Generator) -> nn.Module:
    classes = int(data.labels.max()) + 1
    means = torch.stack([data.images[data.labels == k].mean(0) for k in range(classes)])
    log = os.environ.get("SWEEP_LOG")
    if log:  # one line per training, to count them across processes
        with Path(log).open("a") as handle:
            handle.write(f"{data.name}\n")
    delay = float(os.environ.get("SWEEP_DELAY", "0"))
    if delay:
        time.sleep(delay)
    return MeanClassifier(means)


def train_nothing(data: ImageDataset, generator: torch.Generator) -> nn.Module:
    return None  # type: ignore[return-value]


def train_crash_on_half(data: ImageDataset, generator: torch.Generator) -> nn.Module:
    if "0.5" in data.name:
        raise RuntimeError("simulated crash")
    return train_means(data, generator)


def intensity(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Attributions = the images (bright pixels first)."""
    return images


def darkness(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Another explainer: dark pixels first."""
    return 1 - images


def train_means_again(data: ImageDataset, generator: torch.Generator) -> nn.Module:
    """Another training function with the same results as :func:`train_means`."""
    return train_means(data, generator)


def train_needs_masks(data: ImageDataset, generator: torch.Generator) -> nn.Module:
    """Fails unless the sweep hands the training data's masks over."""
    if data.masks is None:
        raise RuntimeError("train_fn received masks=None")
    return train_means(data, generator)


def train_crash_if_env(data: ImageDataset, generator: torch.Generator) -> nn.Module:
    """Crashes on fraction 0.5 while SWEEP_CRASH is set (a transient failure)."""
    if os.environ.get("SWEEP_CRASH") and "0.5" in data.name:
        raise RuntimeError("transient crash")
    return train_means(data, generator)


def train_kill_worker_once(data: ImageDataset, generator: torch.Generator) -> nn.Module:
    """SIGKILLs its own process at the first fraction-0.5 training (marker: SWEEP_KILL_MARKER)."""
    marker = os.environ.get("SWEEP_KILL_MARKER")
    if marker and "0.5" in data.name:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    return train_means(data, generator)


def small_digits() -> tuple[ImageDataset, ImageDataset]:
    """The fault tests' data: 200 training and 60 test digits."""
    from xai_feedback.data import load_digits

    train, test = load_digits("train"), load_digits("test")
    return train.subset(torch.arange(200)), test.subset(torch.arange(60))
