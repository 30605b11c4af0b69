"""Benchmark: the validation grid that fixed the confound arms' hyper-parameters.

GAPNet, seed 0, trained on 80 % of one family's training images (default: frame) with each arm
spec of ``--grid`` and evaluated on the held-out 20 % with the shortcut's level tied to the
label, random, and absent (``bench confounds_select``). Specs are ``name:key=value;...`` (see
``objective_from_spec`` in ``_arms.py``); the battery's fixed hyper-parameters (``_arms.py``)
were chosen here, never on test sets. Each finished run is kept in a run store under
``OUT/select/gapnet/<family>/<spec>/seed0.json``, fingerprinted by its settings; a rerun
resumes. Run ``python benchmarks/confounds_select.py [--epochs 8] [--grid SPECS]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import _common as common
from _arms import Arm, objective_from_spec, run_one

from xai_feedback.data import CONFOUND_FAMILIES, confounded_digits, train_val_split

__all__ = ["SELECT_GRID", "main"]

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
"""The validation grid: arm specs ``name:key=value;...`` (``objective_from_spec``)."""

VALIDATION_FRACTION = 0.2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the grid; see ``xai-feedback bench confounds_select --help``."""
    quick = ["--grid", "vanilla,cf:fill=constant", "--epochs", "1", "--width", "4"]
    parser = common.parser("confounds_select", __doc__, out="confounds", quick=quick)
    parser.add_argument("--family", default="frame", help="the family whose split is used")
    parser.add_argument(
        "--grid", default=",".join(SELECT_GRID), type=lambda s: s.split(","), help="arm specs"
    )
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--width", type=int, default=16, help="GAPNet width")
    parser.add_argument("--fresh", action="store_true", help="ignore finished runs in --out")
    args = common.parse(parser, argv)
    if args.family not in CONFOUND_FAMILIES:
        parser.error(f"unknown family {args.family!r}; choose from {sorted(CONFOUND_FAMILIES)}")

    family = args.family
    split = partial(train_val_split, val_fraction=VALIDATION_FRACTION, seed=0)
    train, val = split(confounded_digits("train", family))
    _, val_random = split(confounded_digits("train", family, rule="random"))
    _, val_clean = split(confounded_digits("train", family, rule="none"))
    evals = {"val_tied": val, "val_random": val_random, "val_clean": val_clean}
    store = common.settings_store(args.out / "select")
    print(f"validation: {len(val)} held-out {family} training images; tied / random / none")
    print("| arm | val (tied) | val (random) | val (no shortcut) |\n|---|---|---|---|")
    for spec in args.grid:
        arm = Arm(spec, "", partial(objective_from_spec, spec))
        settings = {
            "arch": "gapnet",
            "family": family,
            "spec": spec,
            "seed": 0,
            "epochs": args.epochs,
            "width": args.width,
            "validation_fraction": VALIDATION_FRACTION,
        }
        record = common.resume_run(
            store,
            ["gapnet", family, spec.replace(":", "_").replace(";", "_"), "seed0"],
            settings,
            partial(
                run_one,
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
        )
        print(
            f"| {spec} | {record['val_tied_accuracy']:.3f} | "
            f"{record['val_random_accuracy']:.3f} | {record['val_clean_accuracy']:.3f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
