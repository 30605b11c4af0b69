"""What the confound benchmarks share: the arms, their fixed hyper-parameters, the models.

``bench confounds`` (the battery), ``confounds_select`` (the validation grid that fixed the
hyper-parameters below), ``confounds_levels`` (the frame's level probe), ``confounds_mlp``
(Decoy-MNIST with an MLP) and ``bench decoy`` train with these arms and architectures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from xai_feedback.counterexamples import Counterexamples, region_range
from xai_feedback.data import ImageDataset, confounded_digits
from xai_feedback.data.confounds import SHORTCUT_FAMILIES
from xai_feedback.functional import DEFAULT_SIGMA, PERIPHERY_THRESHOLD, periphery_mask
from xai_feedback.losses import CenterPenalty, MaskPenalty, RRRPenalty
from xai_feedback.models import GAPNet
from xai_feedback.models.resnet import SmallResNet
from xai_feedback.objectives import (
    cam_penalty_objective,
    counterexample_objective,
    periphery_objective,
    rrr_counterexample_objective,
    rrr_objective,
)
from xai_feedback.training import (
    History,
    Objective,
    accuracy,
    cross_entropy_objective,
    fit,
)

__all__ = [
    "ARCHS",
    "ARMS",
    "CENTER_LAMBDA",
    "DECOY_MASK_DILATION",
    "MASK_DILATION",
    "MASK_LAMBDA",
    "MLP_RRR_LAMBDA",
    "RRR_LAMBDA",
    "Arm",
    "applies",
    "objective_from_spec",
    "run_one",
    "train_model",
    "training_range",
]

# Fixed once with ``bench confounds_select`` on a validation split of the frame family (GAPNet),
# never on test sets and never per family or architecture.
CENTER_LAMBDA = 10.0
MASK_LAMBDA = 10.0  # also bench decoy's (chosen there on its own validation split)
MASK_DILATION = 4
RRR_LAMBDA = 1000.0  # also bench decoy's
DECOY_MASK_DILATION = 0
"""bench decoy's mask penalty: the annotation mask undilated."""
MLP_RRR_LAMBDA = 1.0
"""RRR's weight for the Decoy-MNIST MLP (``confounds_mlp --select``: validation, seeds 0-2)."""


ARCHS: dict[str, Callable[[int, torch.Generator], nn.Module]] = {
    "gapnet": lambda width, g: GAPNet(width=width, pools=1, generator=g),
    # the library's SmallResNet adapted to 28x28 (stride-1 stem, strides 1/2/1: a 14x14 CAM)
    "resnet": lambda width, g: SmallResNet(
        1, 10, width=width, stem_stride=1, strides=(1, 2, 1), generator=g
    ),
}


def training_range(train: ImageDataset) -> tuple[float, float]:
    """``(low=, high=)`` of the counterexample fill: the annotated region's range in ``train``."""
    if train.masks is None:
        raise ValueError("the cf_range arm needs masks")
    low, high = region_range(train.images, train.masks)
    return low, high


def _range_counterexamples(seed: int, train: ImageDataset) -> Objective:
    """The ``cf_range`` arm: counterexamples whose fill spans the region's range in ``train``."""
    low, high = training_range(train)
    g = torch.Generator().manual_seed(10_000 + seed)
    return counterexample_objective(Counterexamples(low=low, high=high, generator=g))


@dataclass(frozen=True)
class Arm:
    """A named way of training; ``oracle`` trains with the shortcut's level random."""

    name: str
    description: str
    make: Callable[[int, ImageDataset], Objective]  # (seed, training data) -> objective
    annotated: bool = False
    oracle: bool = False


ARMS: dict[str, Arm] = {
    a.name: a
    for a in [
        Arm("vanilla", "cross-entropy", lambda seed, train: cross_entropy_objective),
        Arm(
            "center",
            f"Gaussian center penalty, signed all-class CAMs, sigma {DEFAULT_SIGMA}, "
            f"lambda {CENTER_LAMBDA:g}",
            lambda seed, train: cam_penalty_objective(CenterPenalty(DEFAULT_SIGMA), CENTER_LAMBDA),
        ),
        Arm(
            "mask",
            f"annotation-mask penalty on signed all-class CAMs, dilation {MASK_DILATION} px, "
            f"lambda {MASK_LAMBDA:g}",
            lambda seed, train: cam_penalty_objective(
                MaskPenalty(dilation=MASK_DILATION), MASK_LAMBDA
            ),
            annotated=True,
        ),
        Arm(
            "rrr",
            f"RRR input-gradient penalty, lambda {RRR_LAMBDA:g}",
            # the battery's recorded runs differentiated through the batch statistics
            lambda seed, train: rrr_objective(None, RRR_LAMBDA, batch_statistics=True),
            annotated=True,
        ),
        Arm(
            "counterexamples",
            "one counterexample per image, annotated region set to a random constant",
            lambda seed, train: counterexample_objective(
                Counterexamples(generator=torch.Generator().manual_seed(10_000 + seed))
            ),
            annotated=True,
        ),
        Arm(
            "cf_range",
            "counterexamples, random constant drawn from the range the annotated region takes "
            "in the training images",
            _range_counterexamples,
            annotated=True,
        ),
        Arm(
            "periphery",
            f"annotation-free counterexamples: the center prior's periphery (sigma "
            f"{DEFAULT_SIGMA}, weight >= {PERIPHERY_THRESHOLD}) taken from another image, and "
            f"set to a random constant (two copies)",
            lambda seed, train: periphery_objective(
                generator=torch.Generator().manual_seed(10_000 + seed)
            ),
        ),
        Arm(
            "oracle",
            "cross-entropy, shortcut level random",
            lambda seed, train: cross_entropy_objective,
            annotated=True,
            oracle=True,
        ),
    ]
}
"""The battery's arms (``bench confounds``)."""


def applies(arm: Arm, family: str) -> bool:
    """Whether ``arm`` is run on ``family``: annotation arms need a shortcut (else = vanilla)."""
    return family in SHORTCUT_FAMILIES or not arm.annotated


def objective_from_spec(spec: str, seed: int, train: ImageDataset | None = None) -> Objective:
    """The objective an arm spec ``name:key=value;...`` names (see ``confounds_select``).

    ``center`` (``s`` sigma, ``lam``), ``mask`` (``d`` dilation, ``f`` receptive-field window,
    ``lam``), ``rrr`` (``lam``, ``out`` sum|all, ``bn`` batch|eval), ``rrrce`` (RRR at
    counterexamples, ``lam``), ``cf`` (counterexamples, ``fill``, ``copies``, ``range=data``:
    the fill's range from the annotated region in ``train``), ``pcf`` (annotation-free
    counterexamples of the center prior's periphery, ``t`` threshold, ``s`` sigma, ``fill``:
    one fill or several joined by ``+``, one copy each),
    ``vanilla``.
    Random draws use a generator seeded with ``1000 + seed``.
    """
    name, _, rest = spec.partition(":")
    kw = dict(item.split("=") for item in rest.split(";") if item)
    lam = float(kw.get("lam", 10))
    g = torch.Generator().manual_seed(1000 + seed)
    if name == "center":
        return cam_penalty_objective(CenterPenalty(float(kw.get("s", DEFAULT_SIGMA))), lam)
    if name == "mask":
        penalty = MaskPenalty(dilation=int(kw.get("d", 0)), field=int(kw.get("f", 1)))
        return cam_penalty_objective(penalty, lam)
    if name == "rrr":
        rrr = RRRPenalty(kw.get("out", "sum"), generator=g)
        return rrr_objective(rrr, lam, batch_statistics=kw.get("bn", "batch") == "batch")
    if name == "rrrce":
        return rrr_counterexample_objective(None, lam, probe=Counterexamples(generator=g))
    if name == "cf":
        low, high = (0.0, 1.0)
        if kw.get("range") == "data":
            if train is None:
                raise ValueError("range=data needs the training data")
            low, high = training_range(train)
        aug = Counterexamples(
            int(kw.get("copies", 1)),
            fill=kw.get("fill", "constant"),
            low=low,
            high=high,
            generator=g,
        )
        return counterexample_objective(aug)
    if name == "pcf":
        region = periphery_mask(
            28,
            28,
            float(kw.get("s", DEFAULT_SIGMA)),
            threshold=float(kw.get("t", PERIPHERY_THRESHOLD)),
        )
        augs = [Counterexamples(fill=f, generator=g) for f in kw.get("fill", "constant").split("+")]
        return counterexample_objective(augs, region=region)
    if name == "vanilla":
        return cross_entropy_objective
    raise ValueError(f"unknown arm spec {spec!r}")


def train_model(
    arch: str,
    family: str,
    arm: Arm,
    seed: int,
    *,
    epochs: int,
    width: int,
    train: ImageDataset | None = None,
) -> tuple[nn.Module, History]:
    """Train a fresh ``arch`` with ``arm`` on ``train`` (default: ``family``'s training set)."""
    if train is None:
        train = confounded_digits(
            "train", family, rule="random" if arm.oracle else "tied", seed=seed
        )
    generator = torch.Generator().manual_seed(seed)
    model = ARCHS[arch](width, generator)
    history = fit(model, train, epochs=epochs, objective=arm.make(seed, train), generator=generator)
    return model, history


def run_one(
    arch: str,
    family: str,
    arm: Arm,
    seed: int,
    *,
    epochs: int,
    width: int,
    train: ImageDataset | None = None,
    evals: dict[str, ImageDataset] | None = None,
) -> dict[str, Any]:
    """Train one model (:func:`train_model`) and return its JSON-ready record.

    ``evals`` defaults to ``family``'s test digits with the shortcut random (``confound_test``)
    and without it (``clean_test``).
    """
    if train is None:
        train = confounded_digits(
            "train", family, rule="random" if arm.oracle else "tied", seed=seed
        )
    if evals is None:
        evals = {
            "confound_test": confounded_digits("test", family, seed=seed),
            "clean_test": confounded_digits("test", family, rule="none", seed=seed),
        }
    model, history = train_model(arch, family, arm, seed, epochs=epochs, width=width, train=train)
    record: dict[str, Any] = {
        "arch": arch,
        "family": family,
        "arm": arm.name,
        "seed": seed,
        "epochs": epochs,
        "width": width,
        "train_accuracy": history.accuracy[-1],
        "seconds_per_epoch": history.seconds_per_epoch,
    }
    for name, data in evals.items():
        record[f"{name}_accuracy"] = accuracy(model, data)
    return record
