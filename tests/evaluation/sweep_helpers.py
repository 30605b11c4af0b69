"""Module-level train functions for the sweep tests (picklable for process executors)."""

from __future__ import annotations

import os
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
