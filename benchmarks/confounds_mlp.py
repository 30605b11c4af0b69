"""Benchmark: Decoy-MNIST with an MLP (Ross et al. 2017) on the digits (``bench confounds_mlp``).

A 4x4 swatch in a random corner, its gray ``255 - 25 y`` in training and random at test; an
MLP 784-50-30-10 (ReLU) trained with vanilla cross-entropy, RRR (lambda ``MLP_RRR_LAMBDA`` of
``_arms.py``), counterexamples, and the oracle (trained with the swatch's gray random). It
reports training accuracy, accuracy on test digits with a random-gray swatch ("random") and
without a swatch ("clean"); Ross et al.'s protocol uses 30 epochs (``--epochs 30``).
``--select`` runs RRR with each of ``--rrr-lambdas`` instead, three seeds, evaluated on a
validation split of the training images. Each finished run is kept in a run store under
``OUT/mlp/<arm>_l<lambda>/seed<N>.json`` (``select_<arm>_l<lambda>`` with ``--select``),
fingerprinted by its settings; a rerun resumes. The table is written to ``OUT/mlp_table.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import _common as common
import torch
from _arms import ARMS, MLP_RRR_LAMBDA, Arm
from torch import nn

from xai_feedback.data import confounded_digits, load_digits, train_val_split
from xai_feedback.objectives import rrr_objective
from xai_feedback.training import accuracy, fit

__all__ = ["decoy_mlp", "main"]

SELECT_SEEDS = 3
"""Seeds of each lambda with ``--select``."""


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


def _arm(name: str, lam: float) -> Arm:
    if name == "rrr":
        return Arm("rrr", f"RRR, lambda {lam:g}", lambda seed, train: rrr_objective(None, lam))
    return ARMS[name]


def _run(arm: Arm, seed: int, *, epochs: int, select: bool) -> dict[str, Any]:
    rule: Literal["random", "tied"] = "random" if arm.oracle else "tied"
    train = confounded_digits("train", "swatch", size=4, rule=rule, seed=seed)
    if select:
        tied = confounded_digits("train", "swatch", size=4)
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
    hist = fit(model, train, epochs=epochs, lr=1e-3, objective=arm.make(seed, train), generator=g)
    out = {"arm": arm.name, "seed": seed, "epochs": epochs, "train": hist.accuracy[-1]}
    out.update({k: accuracy(model, d) for k, d in evals.items()})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; see ``xai-feedback bench confounds_mlp --help``."""
    quick = ["--seeds", "1", "--epochs", "1", "--rrr-lambdas", "1"]
    parser = common.parser("confounds_mlp", __doc__, out="confounds", seeds=5, quick=quick)
    parser.add_argument("--epochs", type=int, default=12, help="Ross et al.'s protocol: 30")
    parser.add_argument("--fresh", action="store_true", help="ignore finished runs in --out")
    parser.add_argument(
        "--select", action="store_true", help="RRR's lambda on a validation split (3 seeds)"
    )
    parser.add_argument(
        "--rrr-lambdas",
        default="1,10,100",
        type=lambda s: [float(v) for v in s.split(",") if v],
        help="the lambdas of --select",
    )
    args = common.parse(parser, argv)

    store = common.settings_store(args.out / "mlp")
    if args.select:
        jobs = [("rrr", lam, seed) for lam in args.rrr_lambdas for seed in range(SELECT_SEEDS)]
    else:
        arms = ("vanilla", "rrr", "counterexamples", "oracle")
        jobs = [(a, MLP_RRR_LAMBDA, seed) for a in arms for seed in range(args.seeds)]
    rows: dict[str, list[dict[str, Any]]] = {}
    for name, lam, seed in jobs:
        arm = _arm(name, lam)
        settings = {
            "arm": name,
            "lambda": lam,
            "seed": seed,
            "epochs": args.epochs,
            "split": "validation" if args.select else "test",
        }
        record = common.resume_run(
            store,
            [f"{'select_' if args.select else ''}{name}_l{lam:g}", f"seed{seed}"],
            settings,
            lambda arm=arm, seed=seed: _run(  # type: ignore[misc]
                arm, seed, epochs=args.epochs, select=args.select
            ),
            fresh=args.fresh,
        )
        rows.setdefault(f"rrr (lambda {lam:g})" if name == "rrr" else name, []).append(record)
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


if __name__ == "__main__":
    raise SystemExit(main())
