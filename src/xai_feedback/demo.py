"""The ``xai-feedback demo``: a CNN learning a shortcut on confounded digits, and its cures.

:func:`run_confounded` trains the reference CNN with a given objective on a confounded training
set and reports the three numbers that make a shortcut visible: training accuracy, accuracy on
clean test digits, and accuracy on the confound's test set (where the confound no longer
gives the class away). :func:`demo` runs it with the arms of :data:`DEMO_ARMS`: plain
cross-entropy, the Gaussian CAM penalty (:data:`CAM_LAMBDA`) and annotation-free
counterexamples of the center prior's periphery
(:func:`~xai_feedback.objectives.periphery_objective`), and prints the comparison. The
benchmarks in the repository's ``benchmarks/`` folder reuse :func:`run_confounded`
(``xai-feedback bench decoy``, ``xai-feedback bench proxy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from xai_feedback._checks import check_choice
from xai_feedback.data import ImageDataset, confounded_digits, load_digits
from xai_feedback.functional.kernels import DEFAULT_SIGMA, PERIPHERY_THRESHOLD
from xai_feedback.losses import CenterPenalty
from xai_feedback.models import GAPNet
from xai_feedback.objectives import cam_penalty_objective, periphery_objective
from xai_feedback.training import Objective, accuracy, cross_entropy_objective, fit

__all__ = [
    "CAM_LAMBDA",
    "DEMO_ARMS",
    "DEMO_FIGURE",
    "ConfoundRun",
    "ConfoundSetup",
    "demo",
    "run_confounded",
    "save_demo_maps",
]

CAM_LAMBDA = 10.0
"""Weight of the CAM penalty (its ``sigma`` is the library's
:data:`~xai_feedback.functional.DEFAULT_SIGMA`). Chosen by ``xai-feedback bench decoy --select``
on a validation split carved from the training images, never on the test sets."""

DEMO_ARMS = ("vanilla", "CAM penalty", "periphery counterexamples")
"""The demo's arms, in the order they run: plain cross-entropy, the Gaussian CAM center penalty,
and annotation-free periphery counterexamples
(:func:`~xai_feedback.objectives.periphery_objective`)."""


@dataclass(frozen=True)
class ConfoundSetup:
    """Which confound, and how the reference CNN is trained on it."""

    family: str = "frame"
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


def _arm_objective(arm: str, seed: int) -> Objective:
    """The training objective of one of :data:`DEMO_ARMS`."""
    if arm == "CAM penalty":
        return cam_penalty_objective(CenterPenalty(), CAM_LAMBDA)
    if arm == "periphery counterexamples":
        return periphery_objective(generator=torch.Generator().manual_seed(seed))
    return cross_entropy_objective


DEMO_FIGURE = "xai_feedback_demo_maps.png"
"""The file the demo writes its maps to (in the current folder)."""


def save_demo_maps(
    models: dict[str, GAPNet],
    data: ImageDataset,
    path: str | Path,
    n: int = 6,
    *,
    title: str | None = None,
) -> Path | None:
    """Plot the signed CAMs of the predicted class of ``n`` images for each model.

    One row per model, labeled with its key (a line break in a key breaks the label),
    one column per image.

    Args:
        models: The models, by row label, in row order.
        data: The images (the first ``n`` are shown, titled with their labels).
        path: Where to save the PNG.
        n: Number of images.
        title: Title of the figure (``None``: none).

    Returns:
        The figure's path, or ``None`` when matplotlib is not installed (the ``plot`` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from xai_feedback.attribution import attribute
    from xai_feedback.viz import plot_maps

    images, labels = data.images[:n], data.labels[:n]
    rows = {
        name: attribute(model, images, method="cam", size=None, reduce="sum")
        for name, model in models.items()
    }
    fig = plot_maps(images, rows, titles=[f"label {int(y)}" for y in labels])
    if title is not None:
        fig.suptitle(title, fontsize=9)
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
    arms: Sequence[str] | None = None,
) -> list[ConfoundRun]:
    """Train ``setup`` with each of :data:`DEMO_ARMS` and print the comparison.

    The arms are plain cross-entropy, the Gaussian CAM penalty, and periphery
    counterexamples (:func:`~xai_feedback.objectives.periphery_objective`); none of them needs
    annotations. The last is the recommendation for that case (centered objects, no
    annotations).

    Args:
        setup: The confound and training hyper-parameters.
        seed: Seed of every run.
        vanilla_only: Run plain cross-entropy only (same as ``arms=["vanilla"]``).
        threads: Torch threads (0: leave torch's default).
        figure: Where to save the CAM maps of every model on confound-test images
            (``None``: no figure; skipped with a note without matplotlib).
        arms: The arms to run, a subset of :data:`DEMO_ARMS` (``None``: all); they run in
            the order of :data:`DEMO_ARMS`.

    Returns:
        The runs, in the order of :data:`DEMO_ARMS`.

    Raises:
        RangeError: An arm is not one of :data:`DEMO_ARMS`.
    """
    chosen = list(DEMO_ARMS) if arms is None else [check_choice(a, "arms", DEMO_ARMS) for a in arms]
    if vanilla_only:
        chosen = ["vanilla"]
    names = [a for a in DEMO_ARMS if a in chosen]
    if threads:
        torch.set_num_threads(threads)
    _print_plan(setup, seed, names)
    runs: list[ConfoundRun] = []
    models: dict[str, GAPNet] = {}
    for name in names:
        objective = _arm_objective(name, seed)
        run, model = run_confounded(
            setup, method=name, objective=objective, seed=seed, progress=True
        )
        runs.append(run)
        models[name] = model
    _print_table(names, runs)
    _print_verdict(dict(zip(names, runs, strict=True)))
    if figure is not None:
        _save_figure(setup, seed, dict(zip(names, runs, strict=True)), models, figure)
    return runs


def _print_plan(setup: ConfoundSetup, seed: int, names: Sequence[str]) -> None:
    """What the demo trains, arm by arm."""
    described = {
        "vanilla": "plain cross-entropy",
        "CAM penalty": (
            f"the Gaussian CAM center penalty (signed CAMs of all classes, sigma {DEFAULT_SIGMA},"
            f" lambda {CAM_LAMBDA:g})"
        ),
        "periphery counterexamples": (
            f"cross-entropy on each image plus two copies whose periphery (center weight"
            f" >= {PERIPHERY_THRESHOLD:g} at sigma {DEFAULT_SIGMA}) is swapped from another image"
            " and set to a random constant"
        ),
    }
    print(
        f"Confounded digits: a {setup.family} confound whose gray gives the label away in training"
        f" (255 - 25*y) and is random at test.\nTraining the reference GAP CNN"
        f" (width {setup.width}, {setup.epochs} epochs, seed {seed}) with, in turn (no"
        " annotations needed):\n"
        + "\n".join(f"  {i}. {name}: {described[name]}" for i, name in enumerate(names, 1)),
        flush=True,
    )


def _print_table(names: Sequence[str], runs: Sequence[ConfoundRun]) -> None:
    """One column per arm: training, clean-test and confound-test accuracy, epoch time."""
    rows = [
        ("train accuracy (confound tied to label)", [r.train_accuracy for r in runs]),
        ("clean test accuracy (no confound)", [r.clean_accuracy for r in runs]),
        ("confound-test accuracy (random gray)", [r.confound_accuracy for r in runs]),
        ("seconds per epoch", [r.seconds_per_epoch for r in runs]),
    ]
    width = max(len(name) for name, _ in rows)
    cols = [max(11, len(n)) for n in names]
    print("\n" + " " * width + "".join(f"   {n:>{c}}" for n, c in zip(names, cols, strict=True)))
    for name, values in rows:
        print(
            f"{name:<{width}}"
            + "".join(f"   {v:>{c}.3f}" for v, c in zip(values, cols, strict=True))
        )


def _print_verdict(by_name: dict[str, ConfoundRun]) -> None:
    """The shortcut vanilla learned, what each arm changed, and the recommendation."""
    if "vanilla" in by_name:
        base = by_name["vanilla"]
        gap = base.train_accuracy - base.confound_accuracy
        print(
            f"\nShortcut: vanilla is {gap:.2f} less accurate once the confound stops matching the"
            " label" + (" -- it learned the confound, not the digits." if gap > 0.3 else ".")
        )
        for name, bench in (
            ("CAM penalty", "decoy"),
            ("periphery counterexamples", "confounds"),
        ):
            if name in by_name:
                run = by_name[name]
                print(
                    f"{name[0].upper() + name[1:]}: confound test"
                    f" {run.confound_accuracy - base.confound_accuracy:+.2f}, clean test"
                    f" {run.clean_accuracy - base.clean_accuracy:+.2f} against vanilla"
                    f" (benchmark over several seeds: xai-feedback bench {bench})."
                )
    if len(by_name) > 1:
        print(
            "Recommended without annotations (objects centered): periphery counterexamples --"
            " they remove the shortcut and keep clean accuracy, while the CAM penalty only"
            " moves the CAMs to the center (see the figure and the clean test accuracy)."
        )


def _save_figure(
    setup: ConfoundSetup,
    seed: int,
    by_name: dict[str, ConfoundRun],
    models: dict[str, GAPNet],
    figure: str | Path,
) -> None:
    """The signed CAMs of every arm's model on confound-test digits, one row per arm."""
    labels = {
        "vanilla": "vanilla",
        "CAM penalty": "CAM penalty",
        "periphery counterexamples": "periphery\ncounterexamples",
    }
    rowed = {
        f"{labels[name]}\nclean acc. {run.clean_accuracy:.2f}": models[name]
        for name, run in by_name.items()
    }
    saved = save_demo_maps(
        rowed,
        setup.datasets(seed)["confound_test"],
        figure,
        title=(
            f"Signed CAMs of the predicted class on confound-test digits ({setup.family},"
            " random gray); red: evidence for the class, blue: against"
        ),
    )
    if saved is None:
        print("(no figure: matplotlib is not installed; pip install 'xai-feedback[plot]')")
    else:
        print(
            f"Figure: {saved} -- the signed CAMs of the predicted class on confound-test"
            " digits, one row per arm (red: evidence for the class, blue: against)."
        )
