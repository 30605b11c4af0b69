"""Benchmark: a battery of confounds x feedback methods x architectures (``bench confounds``).

Families (:func:`xai_feedback.data.make_confound`): frame, corner swatch, left stripe, center
dot, background level, random-position patch, uncentered digits and no confound. Arms: vanilla,
the Gaussian center penalty (no annotations), the annotation-mask CAM penalty, RRR (input
gradients, Ross et al. 2017), counterexample augmentation (Teso & Kersting 2019), the same with
the fill drawn from the annotated region's range in the training data (``cf_range``),
annotation-free counterexamples of the center prior's periphery (``periphery``) and the oracle
(trained with the shortcut's level random). Architectures: GAPNet and a small ResNet with
torchvision's BasicBlock structure, adapted to 28x28 inputs. Every hyper-parameter below was
fixed once, on a validation split of the *frame* family's training images with GAPNet
(``--select``), and then used unchanged on every family and architecture.

For families without a shortcut (uncentered, none) the annotation arms have empty masks and the
oracle is vanilla: they are not run. Each finished run is written atomically to
``OUT/runs/<arch>/<family>/<arm>/seed<N>.json``; a rerun resumes. Run
``python benchmarks/confounds.py [--seeds 5] [--epochs 12]`` or ``xai-feedback bench confounds``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import _common as common
import torch
import torch.nn.functional as F
from torch import nn

from xai_feedback.counterexamples import Counterexamples, region_range
from xai_feedback.data import CONFOUND_FAMILIES, ImageDataset, make_confound, train_val_split
from xai_feedback.data.confounds import SHORTCUT_FAMILIES
from xai_feedback.functional import periphery_mask
from xai_feedback.losses import CenterPenalty, MaskPenalty, RRRPenalty
from xai_feedback.models import GAPNet
from xai_feedback.models.gapnet import init_weights
from xai_feedback.objectives import (
    cam_penalty_objective,
    counterexample_objective,
    per_example_batchnorm,
    rrr_counterexample_objective,
    rrr_objective,
)
from xai_feedback.training import Batch, Objective, accuracy, cross_entropy_objective, fit

__all__ = ["ARCHS", "ARMS", "BasicBlock", "SmallResNet", "main", "run_one"]


class BasicBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock``: two 3x3 conv-BN, identity or 1x1-conv shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class SmallResNet(nn.Module):
    """A torchvision-style ResNet for 28x28 inputs (the CIFAR adaptation of He et al. 2016).

    3x3 stem (no 7x7 conv, no max-pool), three stages of ``blocks`` BasicBlocks with
    ``width, 2 width, 4 width`` channels and strides 1, 2, 1 (a 14x14 map, as GAPNet's),
    global average pooling and ``fc``. ``layer3`` feeds the pooling: the CAM layer.
    """

    cam_layer = "layer3"

    def __init__(
        self,
        width: int = 16,
        blocks: int = 1,
        num_classes: int = 10,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=False)
        planes = [width, 2 * width, 4 * width]
        strides = [1, 2, 1]
        inplanes = width
        stages = []
        for p, s in zip(planes, strides, strict=True):
            layers = [BasicBlock(inplanes, p, s)] + [BasicBlock(p, p) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            inplanes = p
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        if generator is not None:
            init_weights(self, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        out: torch.Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return out


ARCHS: dict[str, Callable[[int, torch.Generator], nn.Module]] = {
    "gapnet": lambda width, g: GAPNet(width=width, pools=1, generator=g),
    "resnet": lambda width, g: SmallResNet(width=width, generator=g),
}

# Fixed once with ``--select`` on a validation split of the frame family (GAPNet), never on
# test sets and never per family or architecture.
CENTER_SIGMA = 0.7
CENTER_LAMBDA = 10.0
MASK_LAMBDA = 10.0
MASK_DILATION = 4
RRR_LAMBDA = 1000.0
PERIPHERY_THRESHOLD = 0.5


def _range_counterexamples(seed: int, train: ImageDataset) -> Objective:
    """The ``cf_range`` arm: counterexamples whose fill spans the region's range in ``train``."""
    low, high = _training_range(train)
    g = torch.Generator().manual_seed(10_000 + seed)
    return counterexample_objective(Counterexamples(low=low, high=high, generator=g))


def _training_range(train: ImageDataset) -> tuple[float, float]:
    """``(low=, high=)`` of the counterexample fill: the annotated region's range in ``train``."""
    if train.masks is None:
        raise ValueError("the cf_range arm needs masks")
    low, high = region_range(train.images, train.masks)
    return low, high


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
            f"Gaussian center penalty, signed all-class CAMs, sigma {CENTER_SIGMA}, "
            f"lambda {CENTER_LAMBDA:g}",
            lambda seed, train: cam_penalty_objective(CenterPenalty(CENTER_SIGMA), CENTER_LAMBDA),
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
            lambda seed, train: rrr_objective(None, RRR_LAMBDA),
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
            lambda seed, train: _range_counterexamples(seed, train),
            annotated=True,
        ),
        Arm(
            "periphery",
            f"annotation-free counterexamples: the center prior's periphery (sigma "
            f"{CENTER_SIGMA}, weight >= {PERIPHERY_THRESHOLD}) taken from another image, and "
            f"set to a random constant (two copies)",
            lambda seed, train: counterexample_objective(
                [
                    Counterexamples(fill=fill, generator=torch.Generator().manual_seed(k + seed))
                    for k, fill in ((10_000, "swap"), (20_000, "constant"))
                ],
                region=periphery_mask(28, 28, CENTER_SIGMA, threshold=PERIPHERY_THRESHOLD),
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


def _applies(arm: Arm, family: str) -> bool:
    return family in SHORTCUT_FAMILIES or not arm.annotated


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
    """Train one model and return its JSON-ready record."""
    if train is None:
        train = make_confound("train", family, rule="random" if arm.oracle else "tied", seed=seed)
    if evals is None:
        evals = {
            "confound_test": make_confound("test", family, seed=seed),
            "clean_test": make_confound("test", family, rule="none", seed=seed),
        }
    generator = torch.Generator().manual_seed(seed)
    model = ARCHS[arch](width, generator)
    history = fit(model, train, epochs=epochs, objective=arm.make(seed, train), generator=generator)
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
    # a RunStore record: status and the headline value (the first evaluation's accuracy)
    record["status"] = "ok"
    record["value"] = record[f"{next(iter(evals))}_accuracy"]
    return record


def _tables(
    records: list[dict[str, Any]],
    archs: Sequence[str],
    families: Sequence[str],
    arms: Sequence[str],
) -> str:
    parts = []
    for arch in archs:
        for key, title in (("confound_test", "confound-test"), ("clean_test", "clean-test")):
            rows = []
            for family in families:
                row: list[object] = [family]
                for arm in arms:
                    rs = [
                        r
                        for r in records
                        if (r["arch"], r["family"], r["arm"]) == (arch, family, arm)
                    ]
                    if not rs and not _applies(ARMS[arm], family):
                        row.append("= vanilla")
                        continue
                    row.append(common.mean_std([float(r[f"{key}_accuracy"]) for r in rs]))
                counts = [
                    str(
                        sum(
                            (r["arch"], r["family"], r["arm"]) == (arch, family, a) for r in records
                        )
                    )
                    for a in arms
                    if _applies(ARMS[a], family)
                ]
                row.append(",".join(counts))
                rows.append(row)
            parts.append(f"**{arch}, {title} accuracy** (mean ± std over seeds)\n")
            parts.append(common.markdown_table(["family", *arms, "n (per arm)"], rows) + "\n")
    return "\n".join(parts)


def _figure(
    plt: Any,
    records: list[dict[str, Any]],
    archs: Sequence[str],
    families: Sequence[str],
    arms: Sequence[str],
) -> Any:
    fig, axes = plt.subplots(len(archs), 1, figsize=(11, 3.2 * len(archs)), squeeze=False)
    width = 0.8 / len(arms)
    for ax, arch in zip(axes[:, 0], archs, strict=True):
        for i, arm in enumerate(arms):
            means, errs = [], []
            for family in families:
                name = arm if _applies(ARMS[arm], family) else "vanilla"
                vals = [
                    float(r["confound_test_accuracy"])
                    for r in records
                    if (r["arch"], r["family"], r["arm"]) == (arch, family, name)
                ]
                means.append(sum(vals) / len(vals) if vals else math.nan)
                n = len(vals)
                mean = means[-1]
                errs.append(
                    math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
                )
            xs = [f + (i - (len(arms) - 1) / 2) * width for f in range(len(families))]
            ax.bar(xs, means, width, yerr=errs, label=arm, capsize=1.5)
        ax.set_xticks(range(len(families)))
        ax.set_xticklabels(families, fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("confound-test acc")
        ax.set_title(arch, fontsize=9)
    axes[0, 0].legend(fontsize=7, ncol=len(arms), loc="lower left")
    fig.tight_layout()
    return fig


SELECT_GRID = (
    "center:s=0.7;lam=10",
    "mask:lam=10",
    "mask:lam=100",
    "mask:d=4;lam=10",
    "mask:d=8;lam=10",
    "mask:d=8;lam=100",
    "mask:f=17;lam=300",
    "rrr:lam=1000",
    "rrr:lam=30000",
    "rrr:lam=1000;bn=eval",
    "rrr:lam=10;out=all",
    "rrr:lam=100;out=all",
    "rrr:lam=1000;out=all",
    "rrr:lam=1000;out=all;bn=eval",
    "rrrce:lam=1000",
    "cf:fill=constant",
    "cf:fill=noise",
    "cf:range=data",
    "center:s=0.7;lam=30",
    "center:s=0.7;lam=100",
    "center:s=0.5;lam=10",
    "pcf:t=0.4",
    "pcf:t=0.5",
    "pcf:t=0.6",
    "pcf:t=0.5;fill=swap",
    "pcf:t=0.4;fill=swap",
    "pcf:t=0.6;fill=swap",
    "pcf:t=0.5;fill=swap+constant",
)
"""The validation grid of item 1 (``--select``): arm specs ``name:key=value;...``."""


def objective_from_spec(spec: str, seed: int, train: ImageDataset | None = None) -> Objective:
    """The objective an arm spec names (see :data:`SELECT_GRID`).

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
        return cam_penalty_objective(CenterPenalty(float(kw.get("s", CENTER_SIGMA))), lam)
    if name == "mask":
        penalty = MaskPenalty(dilation=int(kw.get("d", 0)), field=int(kw.get("f", 1)))
        return cam_penalty_objective(penalty, lam)
    if name == "rrr":
        rrr = RRRPenalty(kw.get("out", "sum"), generator=g)
        if kw.get("bn", "batch") == "batch":
            return rrr_objective(rrr, lam)

        def objective(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
            logits = model(batch.images)
            x = batch.images.detach().requires_grad_(True)
            with per_example_batchnorm(model):
                probe_logits = model(x)
            assert batch.masks is not None
            value = rrr(probe_logits, x, batch.masks)
            return F.cross_entropy(logits, batch.labels) + lam * value, logits

        return objective
    if name == "rrrce":
        return rrr_counterexample_objective(None, lam, probe=Counterexamples(generator=g))
    if name == "cf":
        low, high = (0.0, 1.0)
        if kw.get("range") == "data":
            if train is None:
                raise ValueError("range=data needs the training data")
            low, high = _training_range(train)
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
            float(kw.get("s", CENTER_SIGMA)),
            threshold=float(kw.get("t", PERIPHERY_THRESHOLD)),
        )
        augs = [Counterexamples(fill=f, generator=g) for f in kw.get("fill", "constant").split("+")]
        return counterexample_objective(augs, region=region)
    if name == "vanilla":
        return cross_entropy_objective
    raise ValueError(f"unknown arm spec {spec!r}")


def _select(args: argparse.Namespace) -> int:
    """Hyper-parameter grid on a validation split of one family's training images."""
    family = args.select_family
    tied = make_confound("train", family)
    train, val = train_val_split(tied, 0.2, seed=0)
    _, val_random = train_val_split(make_confound("train", family, rule="random"), 0.2, seed=0)
    _, val_clean = train_val_split(make_confound("train", family, rule="none"), 0.2, seed=0)
    evals = {"val_tied": val, "val_random": val_random, "val_clean": val_clean}
    grid = [Arm(spec, "", partial(objective_from_spec, spec)) for spec in args.grid]
    store = common.RunStore(args.out / "select")
    print(f"validation: {len(val)} held-out {family} training images; tied / random / none")
    print("| arm | val (tied) | val (random) | val (no shortcut) |\n|---|---|---|---|")
    for arm in grid:
        parts = ["gapnet", family, arm.name.replace(":", "_").replace(";", "_"), "seed0"]
        record = common.resume(
            store,
            parts,
            lambda arm=arm: run_one(
                "gapnet",
                family,
                arm,
                0,
                epochs=args.epochs,
                width=args.width,
                train=train,
                evals=evals,
            ),
            fresh=args.fresh,
            epochs=args.epochs,
            width=args.width,
        )
        print(
            f"| {arm.name} | {record['val_tied_accuracy']:.3f} | "
            f"{record['val_random_accuracy']:.3f} | {record['val_clean_accuracy']:.3f} |",
            flush=True,
        )
    return 0


def level_probe(model: nn.Module, clean: ImageDataset) -> dict[str, Any]:
    """Accuracy with every test frame at each trained gray, and where frameless digits go.

    The frame's ten grays ``(255 - 25 v) / 255`` span [0.12, 1]; a frameless image has 0
    there, *beyond* class 9's gray. A model that still leans on the frame, even slightly,
    extrapolates that lean on clean images.
    """
    if clean.masks is None:
        raise ValueError("the level probe needs the frame's masks")
    model.eval()
    at_level = []
    with torch.no_grad():
        region = clean.masks[:, None].expand_as(clean.images)
        for level in range(10):
            x = clean.images.masked_fill(region, (255.0 - 25.0 * level) / 255.0)
            at_level.append(float((model(x).argmax(1) == clean.labels).float().mean()))
        predicted = model(clean.images).argmax(1)
    return {
        "level_accuracy": at_level,
        "clean_predicted_as_9": float((predicted == 9).float().mean()),
        "clean_accuracy": float((predicted == clean.labels).float().mean()),
    }


def _levels(args: argparse.Namespace) -> int:
    """Item 2: why the center penalty's frame model fails on frameless digits (``--levels``)."""
    store = common.RunStore(args.out / "levels")
    rows = []
    for arm_name in args.arms:
        records = []
        for seed in range(args.seeds):

            def run(arm_name: str = arm_name, seed: int = seed) -> dict[str, Any]:
                train = make_confound("train", "frame", rule="tied", seed=seed)
                if ARMS[arm_name].oracle:
                    train = make_confound("train", "frame", rule="random", seed=seed)
                generator = torch.Generator().manual_seed(seed)
                model = ARCHS["gapnet"](args.width, generator)
                fit(
                    model,
                    train,
                    epochs=args.epochs,
                    objective=ARMS[arm_name].make(seed, train),
                    generator=generator,
                )
                clean = make_confound("test", "frame", rule="none", seed=seed)
                return {
                    "arm": arm_name,
                    "seed": seed,
                    "epochs": args.epochs,
                    "status": "ok",
                    "value": 0.0,
                    **level_probe(model, clean),
                }

            rec = common.resume(store, [arm_name, f"seed{seed}"], run, epochs=args.epochs)
            records.append(rec)
        levels = [[r["level_accuracy"][v] for r in records] for v in range(10)]
        rows.append(
            [
                arm_name,
                common.mean_std([r["clean_accuracy"] for r in records]),
                common.mean_std([r["clean_predicted_as_9"] for r in records]),
                common.mean_std([sum(r["level_accuracy"][:9]) / 9 for r in records]),
                common.mean_std(levels[9]),
                len(records),
            ]
        )
    header = [
        "arm",
        "clean (gray 0)",
        "clean predicted 9",
        "frame at grays 0-8",
        "frame at gray 9 (0.12)",
        "n",
    ]
    print(f"frame family, GAPNet, {args.epochs} epochs: accuracy on the test digits")
    print(common.markdown_table(header, rows))
    return 0


def decoy_mlp(generator: torch.Generator) -> nn.Module:
    """Ross et al.'s Decoy-MNIST model in miniature: an MLP 784-50-30-10 with ReLUs."""
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 30), nn.ReLU(), nn.Linear(30, 10)
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5), generator=generator)
            else:
                p.zero_()
    return model


MLP_RRR_LAMBDA = 1.0  # chosen with --mlp --select (validation split, seeds 0-2)


def _mlp(args: argparse.Namespace) -> int:
    """Decoy-MNIST (4x4 corner swatch, Ross et al. 2017) on the digits with an MLP."""
    from xai_feedback.data import confounded_digits, load_digits

    store = common.RunStore(args.out / "mlp")
    tied = confounded_digits("train", "swatch", size=4)
    arms = {
        "vanilla": lambda lam, seed: cross_entropy_objective,
        "rrr": lambda lam, seed: rrr_objective(None, lam),
        "counterexamples": lambda lam, seed: counterexample_objective(
            Counterexamples(generator=torch.Generator().manual_seed(10_000 + seed))
        ),
        "oracle": lambda lam, seed: cross_entropy_objective,
    }
    if args.select:
        jobs = [("rrr", lam, seed) for lam in args.rrr_lambdas for seed in range(3)]
    else:
        jobs = [(a, MLP_RRR_LAMBDA, seed) for a in arms for seed in range(args.seeds)]
    rows: dict[str, list[dict[str, Any]]] = {}
    for arm, lam, seed in jobs:

        def run(arm: str = arm, lam: float = lam, seed: int = seed) -> dict[str, Any]:
            rule = "random" if arm == "oracle" else "tied"
            train = confounded_digits("train", "swatch", size=4, rule=rule, seed=seed)
            if args.select:
                train = train_val_split(tied, 0.2, seed=0)[0]
                rand = confounded_digits("train", "swatch", size=4, rule="random")
                evals = {"random": train_val_split(rand, 0.2, seed=0)[1]}
            else:
                evals = {
                    "random": confounded_digits("test", "swatch", size=4, seed=seed),
                    "clean": load_digits("test"),
                }
            g = torch.Generator().manual_seed(seed)
            model = decoy_mlp(g)
            hist = fit(
                model,
                train,
                epochs=args.epochs,
                lr=1e-3,
                objective=arms[arm](lam, seed),
                generator=g,
            )
            out = {
                "arm": arm,
                "lam": lam,
                "seed": seed,
                "epochs": args.epochs,
                "train": hist.accuracy[-1],
            }
            out.update({k: accuracy(model, d) for k, d in evals.items()})
            out.update(status="ok", value=out["random"])
            return out

        name = f"{'select_' if args.select else ''}{arm}_l{lam:g}"
        rec = common.resume(store, [name, f"seed{seed}"], run, fresh=args.fresh, epochs=args.epochs)
        rows.setdefault(f"{arm} (lambda {lam:g})" if arm == "rrr" else arm, []).append(rec)
    keys = ["train", "random"] + ([] if args.select else ["clean"])
    table = common.markdown_table(
        ["arm", *keys, "n"],
        [
            [a, *(common.mean_std([float(r[k]) for r in rs]) for k in keys), len(rs)]
            for a, rs in rows.items()
        ],
    )
    print(
        f"Decoy MLP on the digits, 4x4 swatch, {args.epochs} epochs"
        f"{' (validation split)' if args.select else ''}:\n{table}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.select:
        (args.out / "mlp_table.md").write_text(table + "\n")
    return 0


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; see ``xai-feedback bench confounds --help``."""
    from tqdm.auto import tqdm

    quick = [
        "--families",
        "frame,none",
        "--arms",
        "vanilla,counterexamples",
        "--archs",
        "gapnet",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--width",
        "4",
    ]
    parser = common.parser("confounds", __doc__, seeds=5, quick=quick)
    parser.add_argument(
        "--families", default=",".join(CONFOUND_FAMILIES), type=lambda s: s.split(",")
    )
    parser.add_argument("--arms", default=",".join(ARMS), type=lambda s: s.split(","))
    parser.add_argument("--archs", default=",".join(ARCHS), type=lambda s: s.split(","))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--width", type=int, default=16, help="GAPNet width")
    parser.add_argument("--resnet-width", type=int, default=8, help="SmallResNet width")
    parser.add_argument("--fresh", action="store_true", help="ignore finished runs in --out")
    parser.add_argument(
        "--report-only", action="store_true", help="tabulate the finished runs, train nothing"
    )
    parser.add_argument("--select", action="store_true", help="hyper-parameter grid on validation")
    parser.add_argument("--select-family", default="frame")
    parser.add_argument(
        "--mlp",
        action="store_true",
        help="Decoy-MNIST MLP table (Ross et al. 2017); use --epochs 30",
    )
    parser.add_argument(
        "--grid", default=",".join(SELECT_GRID), type=lambda s: s.split(","), help="--select arms"
    )
    parser.add_argument(
        "--levels",
        action="store_true",
        help="frame: accuracy per frame gray and on frameless digits (use --arms)",
    )
    parser.add_argument("--rrr-lambdas", default="1,10,100", type=_floats, help="--mlp --select")
    args = common.parse(parser, argv)
    for values, known, what in (
        (args.families, CONFOUND_FAMILIES, "family"),
        (args.arms, ARMS, "arm"),
        (args.archs, ARCHS, "arch"),
    ):
        for v in values:
            if v not in known:
                parser.error(f"unknown {what} {v!r}; choose from {sorted(known)}")
    if args.mlp:
        return _mlp(args)
    if args.select:
        return _select(args)
    if args.levels:
        return _levels(args)

    store = common.RunStore(args.out / "runs")
    widths = {"gapnet": args.width, "resnet": args.resnet_width}
    jobs = [
        (seed, arch, family, arm)
        for seed in range(args.seeds)
        for arch in args.archs
        for family in args.families
        for arm in args.arms
        if _applies(ARMS[arm], family)
    ]
    records = []
    start = time.perf_counter()
    for seed, arch, family, arm in tqdm(jobs, desc="confound battery"):
        if args.report_only:
            parts = [arch, family, arm, f"seed{seed}"]
            found = common.cached(store, parts, epochs=args.epochs, width=widths[arch])
            if found is not None:
                records.append(found)
            continue
        records.append(
            common.resume(
                store,
                [arch, family, arm, f"seed{seed}"],
                lambda arch=arch, family=family, arm=arm, seed=seed: run_one(  # type: ignore[misc]
                    arch, family, ARMS[arm], seed, epochs=args.epochs, width=widths[arch]
                ),
                fresh=args.fresh,
                epochs=args.epochs,
                width=widths[arch],
            )
        )
    tables = _tables(records, args.archs, args.families, args.arms)
    print(
        f"\nConfound battery: {args.epochs} epochs, widths {widths}, up to {args.seeds} seeds "
        f"(n: runs per cell), "
        f"torch threads {torch.get_num_threads()}, {time.perf_counter() - start:.0f} s"
    )
    for name in args.arms:
        print(f"  {name:16s} {ARMS[name].description}")
    print()
    print(tables)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(tables + "\n")
    common.figure(
        args.out / "confounds.png",
        lambda plt: _figure(plt, records, args.archs, args.families, args.arms),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
