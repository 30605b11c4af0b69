"""A compact, reproducible training loop for the reference models and the benchmarks.

Users with their own loop only need the penalties; this loop exists so that demos,
benchmarks and tests train every method the same way (Adam + one-cycle schedule, seeded
shuffling) and differ only in their *objective*.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from xai_feedback._checks import (
    check_int,
    check_model_input,
    check_nonempty,
    check_number,
)
from xai_feedback._modes import eval_mode, train_mode
from xai_feedback._progress import progress_bar
from xai_feedback.data import ImageDataset
from xai_feedback.errors import DTypeError, RangeError

__all__ = ["Batch", "History", "Objective", "accuracy", "cross_entropy_objective", "fit", "predict"]


@dataclass(frozen=True)
class Batch:
    """One training step's inputs, handed to an :data:`Objective`.

    Attributes:
        images: ``(B, C, H, W)`` images.
        labels: ``(B,)`` labels.
        masks: ``(B, H, W)`` confound/annotation masks, or ``None``.
        epoch: Zero-based epoch index (for loss schedules).
        step: Zero-based global step index.
        total_epochs: Number of epochs of the run.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    epoch: int
    step: int
    total_epochs: int


Objective = Callable[[nn.Module, Batch], tuple[torch.Tensor, torch.Tensor]]
"""A training objective: ``(model, batch) -> (scalar loss, logits)``."""


def cross_entropy_objective(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain cross-entropy: the vanilla objective."""
    logits = model(batch.images)
    return F.cross_entropy(logits, batch.labels), logits


@dataclass
class History:
    """Per-epoch training loss, training accuracy and wall time (seconds)."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall time of an epoch."""
        return sum(self.seconds) / max(len(self.seconds), 1)


def fit(
    model: nn.Module,
    data: ImageDataset,
    *,
    epochs: int = 15,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    objective: Objective = cross_entropy_objective,
    generator: torch.Generator | None = None,
    progress: bool | str = False,
) -> History:
    """Train ``model`` in place with Adam and a one-cycle learning-rate schedule.

    Args:
        model: The model to train (moved nowhere: put it and ``data`` on one device).
        data: Training images, labels and optional masks.
        epochs: Number of passes over ``data``.
        batch_size: Examples per step (the last, smaller batch is kept).
        lr: Peak learning rate of the one-cycle schedule.
        weight_decay: Adam's L2 weight decay.
        objective: ``(model, batch) -> (loss, logits)``; cross-entropy by default.
        generator: Random generator for the shuffling (reproducible runs).
        progress: Show a tqdm bar (a string is used as its description).

    Training mode: a model in eval mode is trained in training mode as a whole; a model
    already in training mode keeps its user's per-module flags (a BatchNorm frozen with
    ``bn.eval()`` for fine-tuning keeps its running statistics). Each module's own flag is
    restored on return.

    Returns:
        The per-epoch :class:`History`.

    Raises:
        ShapeError: ``data`` is empty.
        DTypeError: ``data`` is not an :class:`ImageDataset`, or its images' dtype or device
            differs from the model's.
        RangeError: A label outside ``[0, K)`` for a model of ``K`` outputs.

    Example:
        >>> from xai_feedback.data import load_digits
        >>> from xai_feedback.models import GAPNet
        >>> g = torch.Generator().manual_seed(0)
        >>> model = GAPNet(width=4, generator=g)
        >>> history = fit(model, load_digits("train"), epochs=1, generator=g)
        >>> len(history.loss)
        1
    """
    check_int(epochs, "epochs", minimum=1)
    check_int(batch_size, "batch_size", minimum=1)
    check_number(lr, "lr", minimum=0, strict_minimum=True)
    check_number(weight_decay, "weight_decay", minimum=0)
    n = _check_data(model, data)
    _check_label_range(model, data)
    steps_per_epoch = -(-n // batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    history = History()
    desc = progress if isinstance(progress, str) else "train"
    bar = progress_bar(
        total=epochs * steps_per_epoch, desc=desc, enabled=bool(progress), leave=False
    )
    step = 0
    with train_mode(model), closing(bar):
        for epoch in range(epochs):
            start = time.perf_counter()
            order = torch.randperm(n, generator=generator).to(data.images.device)
            loss_sum = torch.zeros((), device=data.images.device)
            correct = torch.zeros((), device=data.images.device, dtype=torch.long)
            for begin in range(0, n, batch_size):
                idx = order[begin : begin + batch_size]
                batch = Batch(
                    data.images[idx],
                    data.labels[idx],
                    None if data.masks is None else data.masks[idx],
                    epoch,
                    step,
                    epochs,
                )
                loss, logits = objective(model, batch)
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                optimizer.step()
                schedule.step()
                loss_sum += loss.detach() * len(idx)
                correct += (logits.detach().argmax(1) == batch.labels).sum()
                step += 1
                bar.update(1)
            history.loss.append(float(loss_sum) / n)
            history.accuracy.append(int(correct) / n)
            history.seconds.append(time.perf_counter() - start)
            bar.set_postfix(loss=f"{history.loss[-1]:.3f}", acc=f"{history.accuracy[-1]:.3f}")
    return history


def _check_data(model: nn.Module, data: ImageDataset) -> int:
    """Checks of ``fit``'s and ``accuracy``'s inputs; returns the number of examples."""
    if not isinstance(model, nn.Module):
        raise DTypeError(f"`model` must be an nn.Module, got {type(model).__name__}.")
    if not isinstance(data, ImageDataset):
        raise DTypeError(f"`data` must be an ImageDataset, got {type(data).__name__}.")
    n = check_nonempty(data.images, "data", "dataset")
    check_model_input(model, data.images, "data.images")
    return n


@torch.no_grad()
def _check_label_range(model: nn.Module, data: ImageDataset) -> None:
    """Labels against the model's outputs: one image's forward in eval mode (flags restored)."""
    with eval_mode(model):
        logits = model(data.images[:1])
    _check_labels_fit(logits, data.labels)


def _check_labels_fit(logits: object, labels: torch.Tensor) -> None:
    """``labels`` are classes of ``(B, K)`` ``logits`` (labels are ``>= 0`` by ImageDataset)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise RangeError(f"`model` must return logits of shape (B, K), got {shape}.")
    highest = int(labels.max())
    if highest >= logits.shape[1]:
        raise RangeError(
            f"`data.labels` must hold classes in [0, {logits.shape[1]}) for a model of "
            f"{logits.shape[1]} outputs, got a label {highest}."
        )


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Return ``(N, K)`` logits in evaluation mode, restoring the model's training flag.

    Raises:
        ShapeError: ``images`` is an empty batch.
        DTypeError: ``images``' dtype or device differs from the model's.
    """
    check_nonempty(images, "images")
    check_model_input(model, images)
    check_int(batch_size, "batch_size", minimum=1)
    with eval_mode(model):
        return torch.cat(
            [model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        )


def accuracy(model: nn.Module, data: ImageDataset, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (evaluation mode, no gradients).

    Raises:
        ShapeError: ``data`` is empty (an accuracy of no examples is undefined).
        RangeError: A label outside ``[0, K)`` for a model of ``K`` outputs (it would count
            as a silent miss).
    """
    _check_data(model, data)
    logits = predict(model, data.images, batch_size)
    _check_labels_fit(logits, data.labels)
    return float((logits.argmax(1) == data.labels).float().mean())
