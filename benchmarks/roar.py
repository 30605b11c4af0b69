"""Faithfulness benchmark on the digits: ROAR, KAR and ROAD for six attribution rankings.

Parts (``--parts``):

- ``sweep``: ROAR and KAR (Hooker et al. 2019) for random, saliency, integrated gradients,
  SmoothGrad-squared, VarGrad and Grad-CAM; fractions 0.1 ... 0.9, ``--repeats`` trainings each,
  spread over ``--workers`` processes (one torch thread each). Every run is written to
  ``OUT/runs`` as it finishes: rerunning the command after an interruption finishes the sweep.
- ``road``: ROAD MoRF / LeRF curves of the same rankings for the base model on the test set.
- ``speed``: our batched ROAD against Quantus's ``ROAD`` metric on the same model, images and
  saliency maps (MoRF, the same fractions): time and curve agreement (if Quantus is installed).
- ``figure``: the four panels.

Attributions come from one base model (GAPNet, width 16, two poolings) trained on the unmodified
digits; every ROAR/KAR run trains the same architecture from scratch on modified images.
Run: ``python benchmarks/roar.py [--repeats 3]`` or ``xai-feedback bench roar``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import _common as common
import torch
from torch import nn

from xai_feedback.data import ImageDataset, load_digits
from xai_feedback.evaluation import Curves, RetrainSweep, road
from xai_feedback.functional.masking import REMOVALS
from xai_feedback.models import GAPNet
from xai_feedback.training import accuracy, fit

__all__ = ["METHODS", "main", "train_reference"]

METHODS: dict[str, dict[str, Any]] = {
    "saliency": {"method": "saliency"},
    "integrated_gradients": {"method": "integrated_gradients"},
    "smoothgrad_sq": {"method": "saliency", "ensemble": "smoothgrad_sq"},
    "vargrad": {"method": "saliency", "ensemble": "vargrad"},
    "grad_cam": {"method": "grad_cam"},
}
"""The attribution rankings compared (a random ranking is always added)."""

WIDTH, POOLS, EPOCHS = 16, 2, 5


def train_reference(data: ImageDataset, generator: torch.Generator) -> nn.Module:
    """A fresh GAPNet trained on ``data`` (the ``train_fn`` of every ROAR/KAR run)."""
    model = GAPNet(width=WIDTH, pools=POOLS, generator=generator)
    fit(model, data, epochs=EPOCHS, generator=generator)
    return model.eval()


def _one_thread() -> None:
    torch.set_num_threads(1)


def _attributions(
    model: nn.Module, name: str, images: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    from xai_feedback.attribution import attribute

    g = torch.Generator().manual_seed(0)
    return attribute(model, images, labels, generator=g, **METHODS[name]).detach()


def _sweep(
    args: argparse.Namespace, base: nn.Module, train: ImageDataset, test: ImageDataset
) -> dict[str, Any]:
    from concurrent.futures import ProcessPoolExecutor

    methods = {name: partial(_attributions, base, name) for name in args.methods}
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # forking a threaded torch can deadlock
    with ProcessPoolExecutor(args.workers, mp_context=context, initializer=_one_thread) as pool:
        sweep = RetrainSweep(
            train_reference,
            methods,
            fractions=args.fractions,
            repeats=args.repeats,
            store=args.out / "runs",
            executor=pool,
            seed=args.seed,
            squared=args.squared,
            fill=args.fill,
            modes=args.modes,
        )
        curves = sweep.run(train, test)
    seconds = time.perf_counter() - start
    for mode, c in curves.items():
        c.save(args.out / f"{mode}.json")
    return {"seconds": seconds, "curves": curves}


def _road(args: argparse.Namespace, base: nn.Module, test: ImageDataset) -> dict[str, Curves]:
    methods = {name: _attributions(base, name, test.images, test.labels) for name in args.methods}
    curves = road(
        base,
        test.images,
        test.labels,
        methods,
        fractions=args.fractions,
        squared=args.squared,
        generator=torch.Generator().manual_seed(args.seed),
    )
    for key, c in curves.items():
        c.save(args.out / f"road_{key}.json")
    return curves


def _speed(args: argparse.Namespace, base: nn.Module, test: ImageDataset) -> dict[str, Any]:
    import numpy as np
    import quantus

    images, labels = test.images[: args.speed_images], test.labels[: args.speed_images]
    maps = _attributions(base, "saliency", images, labels)
    percentages = [round(100 * f) for f in args.fractions]
    metric = quantus.ROAD(  # type: ignore[attr-defined,unused-ignore]
        noise=0.01, percentages=percentages, display_progressbar=False
    )
    start = time.perf_counter()
    scores = metric(
        model=base,
        x_batch=images.numpy(),
        y_batch=labels.numpy(),
        a_batch=maps.numpy(),
        device="cpu",
        batch_size=len(images),
    )
    quantus_s = time.perf_counter() - start
    if isinstance(scores, list):
        scores = scores[0]
    theirs = [float(scores[p]) for p in percentages]

    def ours() -> Curves:
        return road(
            base,
            images,
            labels,
            {"saliency": maps},
            fractions=args.fractions,
            orders=("morf",),
            squared=False,  # Quantus ranks by the maps' values
            random_baseline=False,
            generator=torch.Generator().manual_seed(1),
        )["morf"]

    ours()  # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        curve = ours()
        times.append(time.perf_counter() - start)
    ours_s = min(times)
    mine = curve.mean("saliency")
    n = len(images)
    # binomial standard error of an accuracy difference between two independent noise draws
    se = [math.sqrt(max(2 * p * (1 - p) / n, 1.0 / n**2)) for p in np.clip(mine, 0, 1)]
    diffs = [abs(a - b) for a, b in zip(mine, theirs, strict=True)]
    return {
        "images": n,
        "fractions": list(args.fractions),
        "quantus_s": quantus_s,
        "ours_s": ours_s,
        "speedup": quantus_s / ours_s,
        "quantus_curve": theirs,
        "our_curve": mine,
        "max_abs_diff": max(diffs),
        "max_diff_in_standard_errors": max(d / s for d, s in zip(diffs, se, strict=True)),
    }


def _figure(curves: dict[str, Curves], plt: Any) -> Any:
    keys = [k for k in ("roar", "kar", "road_morf", "road_lerf") if k in curves]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.3 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        curves[key].plot(ax=ax)
        ax.set_title(key.replace("_", " ").upper(), fontsize=9)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; see ``xai-feedback bench roar --help``."""
    quick = ["--methods", "saliency", "--fractions", "0.5", "--repeats", "1", "--workers", "1"]
    quick += ["--train-size", "200", "--speed-images", "20"]
    parser = common.parser("roar", __doc__, out="faithfulness", threads=False, quick=quick)
    parser.add_argument("--parts", default="sweep,road,speed,figure")
    parser.add_argument("--methods", default=",".join(METHODS), type=lambda s: s.split(","))
    parser.add_argument(
        "--fractions",
        default="0.1,0.3,0.5,0.7,0.9",
        type=lambda s: [float(f) for f in s.split(",")],
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--squared",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="rank pixels by squared attributions (default; --no-squared: signed values; use "
        "another --out per setting: runs are cached there)",
    )
    parser.add_argument(
        "--fill",
        default="noisy_linear",
        choices=REMOVALS,
        help="what replaces removed pixels in ROAR/KAR (default: the library's, ROAD's noisy "
        "linear imputation; dataset_mean: Hooker et al.'s; use another --out per fill)",
    )
    parser.add_argument(
        "--modes",
        default="roar,kar",
        type=lambda s: s.split(","),
        help="roar, kar or both (comma-separated)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-size", type=int, default=0, help="0: all 1437 training images")
    parser.add_argument("--speed-images", type=int, default=100)
    args = common.parse(parser, argv)
    for name in args.methods:
        if name not in METHODS:
            parser.error(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    parts = args.parts.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    train, test = load_digits("train"), load_digits("test")
    if args.train_size:
        train = train.subset(torch.arange(args.train_size))
    base = train_reference(train, torch.Generator().manual_seed(1000 + args.seed))
    summary: dict[str, Any] = {
        "base_test_accuracy": accuracy(base, test),
        "threads": torch.get_num_threads(),
    }
    print(f"base model test accuracy {summary['base_test_accuracy']:.3f}", flush=True)
    curves: dict[str, Curves] = {}
    lines = []
    if "sweep" in parts:
        result = _sweep(args, base, train, test)
        summary["sweep_seconds"] = result["seconds"]
        curves.update(result["curves"])
        lines += [
            f"{' + '.join(m.upper() for m in args.modes)}: {len(args.methods) + 1} rankings x "
            f"{len(args.fractions)} fractions x {args.repeats} repeats x {len(args.modes)} in "
            f"{result['seconds'] / 60:.1f} min ({args.workers} worker processes, 1 thread each)",
            "",
        ]
        for mode in args.modes:
            lines += [result["curves"][mode].table(), ""]
    if "road" in parts:
        start = time.perf_counter()
        road_curves = _road(args, base, test)
        summary["road_seconds"] = time.perf_counter() - start
        curves["road_morf"], curves["road_lerf"] = road_curves["morf"], road_curves["lerf"]
        lines += [road_curves["morf"].table(), "", road_curves["lerf"].table(), ""]
    if "speed" in parts:
        try:
            summary["speed"] = _speed(args, base, test)
            s = summary["speed"]
            lines += [
                f"ROAD speed, {s['images']} images x {len(s['fractions'])} fractions (MoRF): "
                f"Quantus {s['quantus_s']:.2f} s, ours {s['ours_s']:.3f} s, {s['speedup']:.0f}x; "
                f"curves differ by at most {s['max_abs_diff']:.3f} "
                f"({s['max_diff_in_standard_errors']:.2f} standard errors)",
                "",
            ]
        except ImportError:
            print("Quantus is not installed: no speed comparison (pip install quantus)")
    common.write_json_atomic(args.out / "summary.json", summary)
    report = "\n".join(lines)
    (args.out / "faithfulness.md").write_text(report + "\n")
    print(report)
    if "figure" in parts and curves:
        common.figure(args.out / "faithfulness.png", partial(_figure, curves))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
