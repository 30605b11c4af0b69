"""Benchmark: why a frame model fails on frameless digits (``bench confounds_levels``).

GAPNet is trained on the frame family (the frame's gray tied to the label; random for the
oracle) with each arm of ``--arms`` (``_arms.py``), then every test digit is scored with its
frame set to each of the ten trained grays, and without a frame (:func:`level_probe`). Each
finished run is kept in a run store under ``OUT/levels/<arm>/seed<N>.json``, fingerprinted by
its settings; a rerun resumes. Run ``python benchmarks/confounds_levels.py --arms
center,periphery,oracle --seeds 3``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import _common as common
import torch
from _arms import ARMS, train_model
from torch import nn

from xai_feedback.data import ImageDataset, confounded_digits

__all__ = ["level_probe", "main"]


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


def _run(arm: str, seed: int, *, epochs: int, width: int) -> dict[str, Any]:
    model, _ = train_model("gapnet", "frame", ARMS[arm], seed, epochs=epochs, width=width)
    clean = confounded_digits("test", "frame", rule="none", seed=seed)
    return {"arm": arm, "seed": seed, "epochs": epochs, **level_probe(model, clean)}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probe; see ``xai-feedback bench confounds_levels --help``."""
    quick = ["--arms", "vanilla", "--seeds", "1", "--epochs", "1", "--width", "4"]
    parser = common.parser("confounds_levels", __doc__, out="confounds", seeds=5, quick=quick)
    parser.add_argument("--arms", default=",".join(ARMS), type=lambda s: s.split(","))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--width", type=int, default=16, help="GAPNet width")
    parser.add_argument("--fresh", action="store_true", help="ignore finished runs in --out")
    args = common.parse(parser, argv)
    for arm in args.arms:
        if arm not in ARMS:
            parser.error(f"unknown arm {arm!r}; choose from {sorted(ARMS)}")

    store = common.settings_store(args.out / "levels")
    rows = []
    for arm in args.arms:
        records = []
        for seed in range(args.seeds):
            settings = {
                "arch": "gapnet",
                "family": "frame",
                "arm": arm,
                "seed": seed,
                "epochs": args.epochs,
                "width": args.width,
            }
            records.append(
                common.resume_run(
                    store,
                    [arm, f"seed{seed}"],
                    settings,
                    lambda arm=arm, seed=seed: _run(  # type: ignore[misc]
                        arm, seed, epochs=args.epochs, width=args.width
                    ),
                    fresh=args.fresh,
                )
            )
        levels = [[r["level_accuracy"][v] for r in records] for v in range(10)]
        rows.append(
            [
                arm,
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


if __name__ == "__main__":
    raise SystemExit(main())
