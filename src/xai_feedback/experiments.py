"""Shared experiment runner for the demo and the benchmarks on confounded digits.

One function trains the reference CNN with a given objective on a confounded training set
and reports the three numbers that make a shortcut visible: training accuracy, accuracy on
clean test digits, and accuracy on the confound's test set (where the confound no longer
gives the class away).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from xai_feedback.data import ImageDataset, confounded_digits, load_digits
from xai_feedback.data.digits import Kind
from xai_feedback.models import GAPNet
from xai_feedback.training import Objective, accuracy, cross_entropy_objective, fit

__all__ = ["ConfoundRun", "ConfoundSetup", "run_confounded"]


@dataclass(frozen=True)
class ConfoundSetup:
    """Which confound, and how the reference CNN is trained on it."""

    kind: Kind = "frame"
    size: int | None = None
    epochs: int = 12
    width: int = 16
    pools: int = 1
    batch_size: int = 64
    lr: float = 3e-3

    def datasets(self, seed: int = 0, oracle: bool = False) -> dict[str, ImageDataset]:
        """Training set (tied grey, or random grey for the oracle), clean and confound tests."""
        return {
            "train": confounded_digits(
                "train",
                self.kind,
                size=self.size,
                seed=seed,
                rule="random" if oracle else "tied",
            ),
            "clean_test": load_digits("test"),
            "confound_test": confounded_digits(
                "test",
                self.kind,
                size=self.size,
                seed=seed,
            ),
        }


@dataclass(frozen=True)
class ConfoundRun:
    """Result of one training run on confounded digits."""

    method: str
    seed: int
    train_accuracy: float
    clean_accuracy: float
    confound_accuracy: float
    seconds_per_epoch: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary."""
        return asdict(self)


def run_confounded(
    setup: ConfoundSetup,
    *,
    method: str = "vanilla",
    objective: Objective = cross_entropy_objective,
    seed: int = 0,
    oracle: bool = False,
    progress: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[ConfoundRun, GAPNet]:
    """Train a fresh :class:`GAPNet` on ``setup``'s confounded digits and evaluate it.

    Args:
        setup: The confound and training hyper-parameters.
        method: A label for the result.
        objective: The training objective (cross-entropy by default).
        seed: Seed of the weights, the shuffling and the confound's random draws.
        oracle: Train with the confound's grey randomised (no shortcut to learn).
        progress: Show a progress bar while training.
        device: Where to train.

    Returns:
        The :class:`ConfoundRun` and the trained model.
    """
    data = {k: v.to(device) for k, v in setup.datasets(seed, oracle).items()}
    generator = torch.Generator().manual_seed(seed)
    model = GAPNet(width=setup.width, pools=setup.pools, generator=generator).to(device)
    history = fit(
        model,
        data["train"],
        epochs=setup.epochs,
        batch_size=setup.batch_size,
        lr=setup.lr,
        objective=objective,
        generator=generator,
        progress=f"{method} (seed {seed})" if progress else False,
    )
    run = ConfoundRun(
        method=method,
        seed=seed,
        train_accuracy=accuracy(model, data["train"]),
        clean_accuracy=accuracy(model, data["clean_test"]),
        confound_accuracy=accuracy(model, data["confound_test"]),
        seconds_per_epoch=history.seconds_per_epoch,
    )
    return run, model
