"""Benchmark: a battery of confounds x feedback methods x architectures (``bench confounds``).

Families (:func:`xai_feedback.data.confounded_digits`): frame, corner swatch, left stripe, center
dot, background level, random-position patch, uncentered digits and no confound. Arms: vanilla,
the Gaussian center penalty (no annotations), the annotation-mask CAM penalty, RRR (input
gradients, Ross et al. 2017), counterexample augmentation (Teso & Kersting 2019), the same with
the fill drawn from the annotated region's range in the training data (``cf_range``),
annotation-free counterexamples of the center prior's periphery (``periphery``) and the oracle
(trained with the shortcut's level random). Architectures: GAPNet and a small ResNet with
torchvision's BasicBlock structure, adapted to 28x28 inputs. Arms, architectures and
hyper-parameters are in ``_arms.py``; every hyper-parameter was fixed once, on a validation
split of the *frame* family's training images with GAPNet (``bench confounds_select``), and
then used unchanged on every family and architecture.

For families without a shortcut (uncentered, none) the annotation arms have empty masks and the
oracle is vanilla: they are not run. Each finished run is kept in a run store under
``OUT/runs/<arch>/<family>/<arm>/seed<N>.json``, fingerprinted by its settings; a rerun
resumes. Run ``python benchmarks/confounds.py [--seeds 5] [--epochs 12]`` or
``xai-feedback bench confounds``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import _common as common
import torch
from _arms import ARCHS, ARMS, applies, run_one

from xai_feedback.data import CONFOUND_FAMILIES

__all__ = ["main"]


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
                    if not rs and not applies(ARMS[arm], family):
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
                    if applies(ARMS[a], family)
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
                name = arm if applies(ARMS[arm], family) else "vanilla"
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
    args = common.parse(parser, argv)
    for values, known, what in (
        (args.families, CONFOUND_FAMILIES, "family"),
        (args.arms, ARMS, "arm"),
        (args.archs, ARCHS, "arch"),
    ):
        for v in values:
            if v not in known:
                parser.error(f"unknown {what} {v!r}; choose from {sorted(known)}")

    store = common.settings_store(args.out / "runs")
    widths = {"gapnet": args.width, "resnet": args.resnet_width}
    jobs = [
        (seed, arch, family, arm)
        for seed in range(args.seeds)
        for arch in args.archs
        for family in args.families
        for arm in args.arms
        if applies(ARMS[arm], family)
    ]
    records = []
    start = time.perf_counter()
    for seed, arch, family, arm in tqdm(jobs, desc="confound battery"):
        parts = [arch, family, arm, f"seed{seed}"]
        settings = {
            "arch": arch,
            "family": family,
            "arm": arm,
            "seed": seed,
            "epochs": args.epochs,
            "width": widths[arch],
        }
        if args.report_only:
            found = common.stored_run(store, parts, settings)
            if found is not None:
                records.append(found)
            continue
        records.append(
            common.resume_run(
                store,
                parts,
                settings,
                lambda arch=arch, family=family, arm=arm, seed=seed: run_one(  # type: ignore[misc]
                    arch, family, ARMS[arm], seed, epochs=args.epochs, width=widths[arch]
                ),
                fresh=args.fresh,
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
