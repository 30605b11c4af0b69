"""One retraining run of a ROAR / KAR sweep: mask, train, evaluate (runs in the workers)."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from xai_feedback.data import ImageDataset
from xai_feedback.errors import DTypeError
from xai_feedback.evaluation._types import EvalFn, TrainFn
from xai_feedback.functional.masking import rank_mask, remove_pixels

__all__ = ["Payload", "Task", "failure_record", "run_task"]

Record = dict[str, Any]


@dataclass(frozen=True)
class Task:
    """One point of a sweep: mode, method, fraction and repeat."""

    mode: str
    method: str
    fraction: float
    repeat: int

    @property
    def parts(self) -> tuple[str, str, str]:
        """The store names of the run's record."""
        return (self.mode, self.method, f"f{self.fraction:.6g}_r{self.repeat}")

    def seeds(self, seed: int) -> tuple[int, int]:
        """The run's training and ranking seeds from the sweep's ``seed`` (shared by methods)."""
        return seed + self.repeat, (seed + 1) * 100_003 + self.repeat


@dataclass(frozen=True)
class Payload:
    """Everything one run needs, picklable for process (or cluster) executors."""

    task: Task
    train_fn: TrainFn
    eval_fn: EvalFn
    train: ImageDataset
    test: ImageDataset
    train_scores: torch.Tensor | None  # None: random ranking
    test_scores: torch.Tensor | None
    fill: str
    dataset_mean: torch.Tensor
    train_seed: int
    ranking_seed: int


def _modify(
    data: ImageDataset, scores: torch.Tensor | None, p: Payload, g: torch.Generator
) -> ImageDataset:
    """``data`` with the run's pixels removed; labels and masks kept."""
    if scores is None:
        n, _, h, w = data.images.shape
        scores = torch.rand(n, h, w, generator=g)
    mask = rank_mask(scores, p.task.fraction, most_relevant=p.task.mode == "roar")
    images = remove_pixels(data.images, mask, p.fill, dataset_mean=p.dataset_mean, generator=g)
    name = f"{data.name}/{p.task.mode}{p.task.fraction:g}"
    return ImageDataset(images, data.labels, data.masks, name=name)


def failure_record(error: BaseException, start: float | None = None) -> Record:
    """A failed run's record: the error, its traceback and (when known) the time spent."""
    record: Record = {
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "traceback": "".join(traceback.format_exception(error)),
    }
    if start is not None:
        record["seconds"] = time.perf_counter() - start
    return record


def run_task(p: Payload) -> Record:
    """Run one (mode, method, fraction, repeat): mask, train, evaluate. Never raises."""
    start = time.perf_counter()
    try:
        g = torch.Generator().manual_seed(p.ranking_seed)
        train = _modify(p.train, p.train_scores, p, g)
        test = _modify(p.test, p.test_scores, p, g)
        model = p.train_fn(train, torch.Generator().manual_seed(p.train_seed))
        if not isinstance(model, nn.Module):
            raise DTypeError(
                f"`train_fn` must return the trained nn.Module, got {type(model).__name__}."
            )
        value = float(p.eval_fn(model, test))
        return {"status": "ok", "value": value, "seconds": time.perf_counter() - start}
    except Exception as error:  # recorded, and the sweep goes on
        return failure_record(error, start)
