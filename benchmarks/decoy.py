"""Benchmark: explanation penalties against label-tied confounds (``xai-feedback bench decoy``).

For each confound (the 2 px frame, an 8x8 corner swatch, Ross et al.'s 4x4 swatch) and each
method (vanilla, CAM center-penalty variants, the annotation-mask penalty, RRR and the oracle
trained without a shortcut), over several seeds, it reports mean ± std of the confound-test
accuracy, the clean-test accuracy, the share of CAM energy on the confound, and the time per
epoch relative to vanilla measured in the same run. The shared arms and hyper-parameters are in
``_arms.py``. Each run is kept in a run store under ``OUT/runs/<confound>/<method>/seed<N>.json``
(``--select``: ``OUT/select/...``) as soon as it ends, fingerprinted by its settings, so an
interrupted benchmark resumes where it stopped. Run: ``python benchmarks/decoy.py [--seeds 5]``
or ``xai-feedback bench decoy``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import _common as common
import torch
from _arms import ARMS, DECOY_MASK_DILATION, MASK_LAMBDA, Arm, objective_from_spec

from xai_feedback.data import ImageDataset, confounded_digits, train_val_split
from xai_feedback.demo import CAM_LAMBDA, ConfoundSetup, run_confounded
from xai_feedback.evaluation.fingerprint import Fingerprint
from xai_feedback.functional import DEFAULT_SIGMA
from xai_feedback.hooks import CAMHook
from xai_feedback.losses import CenterPenalty, MaskPenalty
from xai_feedback.models import GAPNet
from xai_feedback.objectives import cam_penalty_objective

__all__ = ["CONFOUNDS", "METHODS", "confound_energy_share", "main", "run_one"]

# The shared arms (``_arms.py``) and their hyper-parameters were chosen on validation splits
# carved from the training images (``--select`` here, ``bench confounds_select``), never on the
# test sets; the CAM penalty's are the demo's.
METHODS: dict[str, Arm] = {
    m.name: m
    for m in [
        ARMS["vanilla"],
        Arm(
            "cam",
            f"Gaussian center penalty, signed CAM of all classes (default), sigma {DEFAULT_SIGMA}, "
            f"lambda {CAM_LAMBDA:g}",
            lambda seed, train: cam_penalty_objective(CenterPenalty(), CAM_LAMBDA),
        ),
        Arm(
            "cam-target-relu",
            "the first experiments' form: ReLU'd CAM of the target class",
            lambda seed, train: cam_penalty_objective(
                CenterPenalty(classes="target", signed=False), CAM_LAMBDA
            ),
        ),
        Arm(
            "cam-all-relu",
            "ReLU'd CAMs of all classes",
            lambda seed, train: cam_penalty_objective(CenterPenalty(signed=False), CAM_LAMBDA),
        ),
        Arm(
            "gradcam",
            "Gaussian penalty on the signed Grad-CAMs of all classes (CAM scale, CAM's lambda)",
            lambda seed, train: cam_penalty_objective(
                CenterPenalty(), CAM_LAMBDA, method="grad_cam"
            ),
        ),
        Arm(
            "gradcam-target",
            "Gaussian penalty on the signed Grad-CAM of the target class (CAM scale)",
            lambda seed, train: cam_penalty_objective(
                CenterPenalty(classes="target"), CAM_LAMBDA, method="grad_cam"
            ),
        ),
        Arm(
            "mask",
            f"annotation-mask penalty on signed all-class CAMs, lambda {MASK_LAMBDA:g}",
            lambda seed, train: cam_penalty_objective(
                MaskPenalty(dilation=DECOY_MASK_DILATION), MASK_LAMBDA
            ),
            annotated=True,
        ),
        ARMS["rrr"],
        ARMS["oracle"],
    ]
}
"""The compared methods: arms of ``_arms.py`` (``oracle``: the confound's gray random)."""

CONFOUNDS: dict[str, tuple[str, int]] = {
    "frame": ("frame", 2),
    "swatch8": ("swatch", 8),
    "swatch4": ("swatch", 4),
}
"""Benchmark confound name -> (family, size)."""


def confound_energy_share(model: torch.nn.Module, data: ImageDataset) -> float:
    """Mean share of all-class CAM energy that falls on the confound mask, at input size.

    The signed CAMs of every class are resized to the image bilinearly; per image the share
    is ``sum(mask * cam^2) / sum(cam^2)``. A map spread uniformly would score the mask's area
    share (0.27 for the 2 px frame).
    """
    assert data.masks is not None
    with CAMHook(model, eval_mode=True) as hook, torch.no_grad():
        logits = model(data.images)
        maps = hook.maps(
            logits, all_classes=True, size=(int(data.images.shape[-2]), int(data.images.shape[-1]))
        )
    energy = maps.pow(2).sum(dim=1)
    inside = (energy * data.masks).flatten(1).sum(1)
    return float((inside / energy.flatten(1).sum(1).clamp_min(1e-12)).mean())


def run_one(
    confound: str,
    method: Arm,
    seed: int,
    *,
    epochs: int,
    width: int,
    pools: int,
    train_data: ImageDataset | None = None,
    evals: dict[str, ImageDataset] | None = None,
) -> tuple[dict[str, float | int | str], GAPNet]:
    """Train one model and measure it; returns the JSON-ready record and the model."""
    family, size = CONFOUNDS[confound]
    setup = ConfoundSetup(family=family, size=size, epochs=epochs, width=width, pools=pools)
    confound_test = None
    if train_data is None or evals is None:
        data = setup.datasets(seed, method.oracle)
        train_data = data.pop("train") if train_data is None else train_data
        if evals is None:
            evals = data
            confound_test = data["confound_test"]
    run, model = run_confounded(
        setup,
        method=method.name,
        objective=method.make(seed, train_data),
        seed=seed,
        oracle=method.oracle,
        train_data=train_data,
        evals=evals,
    )
    record: dict[str, float | int | str] = {
        "confound": confound,
        "method": method.name,
        "seed": seed,
        "epochs": epochs,
        "train_accuracy": run.train_accuracy,
        "seconds_per_epoch": run.seconds_per_epoch,
    }
    for name, value in run.accuracies.items():
        record[f"{name}_accuracy"] = value
    if confound_test is not None:
        record["confound_energy_share"] = confound_energy_share(model, confound_test)
    return record, model


def _column(records: list[dict[str, Any]], key: str) -> str:
    return common.mean_std([float(r[key]) for r in records])


def _table(records: list[dict[str, Any]], confounds: Sequence[str], methods: Sequence[str]) -> str:
    header = ["confound", "method", "confound-test acc", "clean-test acc", "energy on confound"]
    header += ["epoch time vs vanilla", "n"]
    lines = []
    for confound in confounds:
        rows = [r for r in records if r["confound"] == confound]
        vanilla = [float(r["seconds_per_epoch"]) for r in rows if r["method"] == "vanilla"]
        base = statistics.fmean(vanilla) if vanilla else float("nan")
        for method in methods:
            rs = [r for r in rows if r["method"] == method]
            if not rs:
                continue
            ratio = statistics.fmean(float(r["seconds_per_epoch"]) for r in rs) / base
            accuracies = [_column(rs, f"{k}_accuracy") for k in ("confound_test", "clean_test")]
            energy = _column(rs, "confound_energy_share")
            lines.append([confound, method, *accuracies, energy, f"{ratio:.2f}x", len(rs)])
    return common.markdown_table(header, lines)


def _figure(plt: Any, models: dict[str, GAPNet], confound: str, n_images: int = 6) -> Any:
    family, size = CONFOUNDS[confound]
    test = confounded_digits("test", family, size=size, seed=0)
    images = test.images[:n_images]
    fig, axes = plt.subplots(len(models), n_images, figsize=(1.6 * n_images, 1.7 * len(models)))
    for row, (name, model) in enumerate(models.items()):
        with CAMHook(model, eval_mode=True) as hook, torch.no_grad():
            logits = model(images)
            maps = hook.maps(
                logits, None, size=(int(images.shape[-2]), int(images.shape[-1]))
            )  # predicted class, signed
        pred = logits.argmax(1)
        for col in range(n_images):
            ax = axes[row, col]
            ax.imshow(images[col, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            m = maps[col].numpy()
            lim = float(abs(m).max()) or 1.0
            ax.imshow(m, cmap="bwr", vmin=-lim, vmax=lim, alpha=0.55)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"y={int(test.labels[col])} p={int(pred[col])}", fontsize=7)
            if col == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle(f"signed CAM of the predicted class, {confound} confound test images", fontsize=9)
    fig.tight_layout()
    return fig


def _select(args: argparse.Namespace) -> int:
    """Grid over lambda and sigma on a validation split carved from the training images."""
    confound = args.confounds[0]
    family, size = CONFOUNDS[confound]
    full = confounded_digits("train", family, size=size)
    shuffled = confounded_digits("train", family, size=size, rule="random")
    clean = confounded_digits("train", family, size=size, rule="none")
    train, val = train_val_split(full, 0.2, seed=0)
    _, val_random = train_val_split(shuffled, 0.2, seed=0)
    _, val_clean = train_val_split(clean, 0.2, seed=0)
    evals = {"val_tied": val, "val_random": val_random, "val_clean": val_clean}
    store = common.settings_store(args.out / "select")
    print(
        f"validation: the same {len(val)} held-out training images with the confound's gray "
        "tied, randomized, and without the confound"
    )
    print("| sigma | lambda | val (tied) | val (confound random) | val (no confound) |")
    print("|---|---|---|---|---|")
    for sigma in args.sigmas:
        for lam in args.lambdas:
            spec = f"center:s={sigma!r};lam={lam!r}"
            method = Arm("cam", "", partial(objective_from_spec, spec))
            settings = {
                "confound": confound,
                "spec": spec,
                "seed": 0,
                "epochs": args.epochs,
                "width": args.width,
                "pools": args.pools,
            }

            def run(method: Arm = method) -> dict[str, Any]:
                record, _ = run_one(
                    confound,
                    method,
                    0,
                    epochs=args.epochs,
                    width=args.width,
                    pools=args.pools,
                    train_data=train,
                    evals=evals,
                )
                return record

            parts = [confound, f"cam_s{sigma:g}_l{lam:g}", "seed0"]
            record = common.resume_run(store, parts, settings, run, fresh=args.fresh)
            print(
                f"| {sigma} | {lam:g} | {record['val_tied_accuracy']:.3f} | "
                f"{record['val_random_accuracy']:.3f} | {record['val_clean_accuracy']:.3f} |",
                flush=True,
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; see ``xai-feedback bench decoy --help``."""
    from tqdm.auto import tqdm

    from xai_feedback._progress import progress_enabled

    quick = ["--confounds", "swatch4", "--methods", "vanilla,cam", "--seeds", "1", "--epochs", "1"]
    parser = common.parser("decoy", __doc__, seeds=5, quick=[*quick, "--width", "4"])
    parser.add_argument("--confounds", default="frame,swatch8,swatch4", type=lambda s: s.split(","))
    parser.add_argument("--methods", default=",".join(METHODS), type=lambda s: s.split(","))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--pools", type=int, default=1, help="GAPNet poolings (1: 14x14 CAMs)")
    parser.add_argument("--fresh", action="store_true", help="ignore finished runs in --out")
    parser.add_argument("--select", action="store_true", help="hyper-parameter grid on validation")
    parser.add_argument(
        "--sigmas", default="0.5,0.6,0.7", type=lambda s: [float(v) for v in s.split(",")]
    )
    parser.add_argument(
        "--lambdas", default="3,10,20", type=lambda s: [float(v) for v in s.split(",")]
    )
    args = common.parse(parser, argv)
    for name in args.confounds:
        if name not in CONFOUNDS:
            parser.error(f"unknown confound {name!r}; choose from {sorted(CONFOUNDS)}")
    for name in args.methods:
        if name not in METHODS:
            parser.error(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    if args.select:
        return _select(args)

    store = common.settings_store(args.out / "runs")
    records: list[dict[str, Any]] = []
    jobs = [(c, m, s) for c in args.confounds for s in range(args.seeds) for m in args.methods]
    figure_models: dict[str, dict[str, GAPNet]] = {c: {} for c in args.confounds}
    start = time.perf_counter()
    for confound, method_name, seed in tqdm(
        jobs, desc="decoy benchmark", disable=not progress_enabled(True)
    ):
        parts = [confound, method_name, f"seed{seed}"]
        settings = {
            "confound": confound,
            "method": method_name,
            "seed": seed,
            "epochs": args.epochs,
            "width": args.width,
            "pools": args.pools,
        }
        weights = store.path(parts, ".pt")
        cached = None if args.fresh else common.stored_run(store, parts, settings)
        if cached is not None and (seed or weights.exists()):
            records.append(cached)
            if seed == 0:
                model = GAPNet(width=args.width, pools=args.pools)
                model.load_state_dict(torch.load(weights, weights_only=True))
                figure_models[confound][method_name] = model
            continue
        record, model = run_one(
            confound,
            METHODS[method_name],
            seed,
            epochs=args.epochs,
            width=args.width,
            pools=args.pools,
        )
        if seed == 0:  # kept for the figure, so a resumed run can draw it without retraining
            tmp = weights.with_suffix(".pt.tmp")
            weights.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), tmp)
            tmp.replace(weights)
            figure_models[confound][method_name] = model
        records.append(store.put(parts, record, Fingerprint.of(settings)))
    table = _table(records, args.confounds, args.methods)
    print(
        f"\nDecoy benchmark: GAPNet(width={args.width}, pools={args.pools}), {args.epochs} epochs, "
        f"{args.seeds} seeds, torch threads {torch.get_num_threads()}, "
        f"{time.perf_counter() - start:.0f} s"
    )
    for name in args.methods:
        print(f"  {name:16s} {METHODS[name].description}")
    print()
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table + "\n")
    for confound, models in figure_models.items():
        draw = partial(_figure, models=models, confound=confound)
        if models and not common.figure(args.out / f"cams_{confound}.png", draw):
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
