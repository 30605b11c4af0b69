"""The ``xai-feedback demo``: a CNN learning a shortcut on confounded digits, and its cure.

:func:`run_confounded` trains the reference CNN with a given objective on a confounded training
set and reports the three numbers that make a shortcut visible: training accuracy, accuracy on
clean test digits, and accuracy on the confound's test set (where the confound no longer
gives the class away). :func:`demo` runs it with plain cross-entropy and with the Gaussian CAM
penalty (:data:`CAM_SIGMA`, :data:`CAM_LAMBDA`) and prints the comparison. The benchmarks in
the repository's ``benchmarks/`` folder reuse both (``xai-feedback bench decoy``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from xai_feedback.data import ImageDataset, confounded_digits, load_digits
from xai_feedback.data.digits import DigitFamily
from xai_feedback.functional.kernels import DEFAULT_SIGMA
from xai_feedback.losses import CenterPenalty
from xai_feedback.models import GAPNet
from xai_feedback.objectives import cam_penalty_objective
from xai_feedback.training import Objective, accuracy, cross_entropy_objective, fit

__all__ = [
    "CAM_LAMBDA",
    "CAM_SIGMA",
    "DEMO_FIGURE",
    "ConfoundRun",
    "ConfoundSetup",
    "demo",
    "run_confounded",
    "save_demo_maps",
]

CAM_SIGMA = DEFAULT_SIGMA
"""``sigma`` of the Gaussian center penalty (:class:`~xai_feedback.losses.CenterPenalty`)."""
CAM_LAMBDA = 10.0
"""Weight of the CAM penalty. Both chosen by ``xai-feedback bench decoy --select`` on a
validation split carved from the training images, never on the test sets."""


@dataclass(frozen=True)
class ConfoundSetup:
    """Which confound, and how the reference CNN is trained on it."""

    family: DigitFamily = "frame"
    size: int | None = None
    epochs: int = 12
    width: int = 16
    pools: int = 1
    batch_size: int = 64
    lr: float = 3e-3

    def datasets(self, seed: int = 0, oracle: bool = False) -> dict[str, ImageDataset]:
        """Training set (tied gray, or random gray for the oracle), clean and confound tests."""
        return {
            "train": confounded_digits(
                "train",
                self.family,
                size=self.size,
                seed=seed,
                rule="random" if oracle else "tied",
            ),
            "clean_test": load_digits("test"),
            "confound_test": confounded_digits(
                "test",
                self.family,
                size=self.size,
                seed=seed,
            ),
        }


@dataclass(frozen=True)
class ConfoundRun:
    """Result of one training run on confounded digits.

    Attributes:
        method: The run's label.
        seed: Its seed.
        train_accuracy: Accuracy on its own training data.
        seconds_per_epoch: Mean wall time of an epoch.
        accuracies: Accuracy on each evaluation set, by name.
    """

    method: str
    seed: int
    train_accuracy: float
    seconds_per_epoch: float
    accuracies: dict[str, float]

    @property
    def clean_accuracy(self) -> float:
        """Accuracy on the clean test digits."""
        return self.accuracies["clean_test"]

    @property
    def confound_accuracy(self) -> float:
        """Accuracy on the confound's test set (gray no longer tied to the label)."""
        return self.accuracies["confound_test"]

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
    train_data: ImageDataset | None = None,
    evals: dict[str, ImageDataset] | None = None,
) -> tuple[ConfoundRun, GAPNet]:
    """Train a fresh :class:`GAPNet` on ``setup``'s confounded digits and evaluate it.

    Args:
        setup: The confound and training hyper-parameters.
        method: A label for the result.
        objective: The training objective (cross-entropy by default).
        seed: Seed of the weights, the shuffling and the confound's random draws.
        oracle: Train with the confound's gray randomized (no shortcut to learn).
        progress: Show a progress bar while training.
        device: Where to train.
        train_data: Train on this instead of ``setup``'s training set (e.g. a split of it).
        evals: Evaluate on these instead of the clean and confound test sets.

    Returns:
        The :class:`ConfoundRun` and the trained model.

    Example:
        >>> run, model = run_confounded(ConfoundSetup(family="swatch", size=4, epochs=1, width=4))
        >>> sorted(run.accuracies)
        ['clean_test', 'confound_test']
        >>> 0.0 <= run.confound_accuracy <= 1.0
        True
    """
    if train_data is None or evals is None:
        data = setup.datasets(seed, oracle)
        train_data = data.pop("train") if train_data is None else train_data
        evals = data if evals is None else evals
    train = train_data.to(device)
    generator = torch.Generator().manual_seed(seed)
    model = GAPNet(width=setup.width, pools=setup.pools, generator=generator).to(device)
    history = fit(
        model,
        train,
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
        train_accuracy=accuracy(model, train),
        seconds_per_epoch=history.seconds_per_epoch,
        accuracies={name: accuracy(model, d.to(device)) for name, d in evals.items()},
    )
    return run, model


DEMO_FIGURE = "xai_feedback_demo_maps.png"
"""The file the demo writes its maps to (in the current folder)."""


def save_demo_maps(
    models: dict[str, GAPNet], data: ImageDataset, path: str | Path, n: int = 6
) -> Path | None:
    """Plot the signed CAMs of the predicted class of ``n`` images for each model.

    Returns:
        The figure's path, or ``None`` when matplotlib is not installed (the ``plot`` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from xai_feedback.attribution import cam_maps
    from xai_feedback.viz import plot_maps

    images, labels = data.images[:n], data.labels[:n]
    rows = {name: cam_maps(model, images, None, "cam") for name, model in models.items()}
    fig = plot_maps(images, rows, titles=[f"label {int(y)}" for y in labels])
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def demo(
    setup: ConfoundSetup,
    *,
    seed: int = 0,
    vanilla_only: bool = False,
    threads: int = 0,
    figure: str | Path | None = DEMO_FIGURE,
) -> list[ConfoundRun]:
    """Train ``setup`` with plain cross-entropy and with the CAM penalty; print the comparison.

    Args:
        setup: The confound and training hyper-parameters.
        seed: Seed of both runs.
        vanilla_only: Skip the CAM-penalty run.
        threads: Torch threads (0: leave torch's default).
        figure: Where to save the CAM maps of both models on confound-test images
            (``None``: no figure; skipped with a note without matplotlib).

    Returns:
        The runs, vanilla first.
    """
    if threads:
        torch.set_num_threads(threads)
    print(
        f"Confounded digits: a {setup.family} confound whose gray gives the label away in training"
        f" (255 - 25*y) and is random at test.\nTraining the reference GAP CNN"
        f" (width {setup.width}, {setup.epochs} epochs, seed {seed}) twice: with plain"
        f" cross-entropy, and with the Gaussian CAM penalty\n(signed CAMs of all classes,"
        f" sigma {CAM_SIGMA}, lambda {CAM_LAMBDA:g}; no annotations needed)...",
        flush=True,
    )
    run, model = run_confounded(setup, method="vanilla", seed=seed, progress=True)
    runs, models = [run], {"vanilla": model}
    if not vanilla_only:
        objective = cam_penalty_objective(CenterPenalty(CAM_SIGMA), CAM_LAMBDA)
        run, model = run_confounded(
            setup, method="CAM penalty", objective=objective, seed=seed, progress=True
        )
        runs.append(run)
        models["CAM penalty"] = model
    rows = [
        ("train accuracy (confound tied to label)", [r.train_accuracy for r in runs]),
        ("clean test accuracy (no confound)", [r.clean_accuracy for r in runs]),
        ("confound-test accuracy (random gray)", [r.confound_accuracy for r in runs]),
        ("seconds per epoch", [r.seconds_per_epoch for r in runs]),
    ]
    width = max(len(name) for name, _ in rows)
    names = ["vanilla", "CAM penalty"][: len(runs)]
    print("\n" + " " * width + "".join(f"   {n:>11}" for n in names))
    for name, values in rows:
        print(f"{name:<{width}}" + "".join(f"   {v:>11.3f}" for v in values))
    gap = runs[0].train_accuracy - runs[0].confound_accuracy
    print(
        f"\nShortcut: vanilla is {gap:.2f} less accurate once the confound stops matching the"
        " label" + (" -- it learned the confound, not the digits." if gap > 0.3 else ".")
    )
    if len(runs) > 1:
        print(
            f"The CAM penalty recovers {runs[1].confound_accuracy - runs[0].confound_accuracy:+.2f}"
            " on the confound test set (benchmark over 5 seeds: xai-feedback bench decoy)."
        )
    if figure is not None:
        saved = save_demo_maps(models, setup.datasets(seed)["confound_test"], figure)
        if saved is None:
            print("(no figure: matplotlib is not installed; pip install 'xai-feedback[plot]')")
        else:
            print(
                f"Figure: {saved} -- the signed CAMs of the predicted class on confound-test"
                " digits, one row per model (red: evidence for the class, blue: against)."
            )
    return runs
