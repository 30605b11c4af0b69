"""Benchmark: the confound battery on a vision transformer trained here (``bench vit_confounds``).

:class:`~xai_feedback.models.TinyViT` (4x4 patches, a 7x7 token grid, dim 64, depth 4, 4
heads, MLP 2x, average-pooled patch tokens; about 139 k parameters) trained from scratch on the
confounded digit families (:func:`xai_feedback.data.confounded_digits`) with each arm: vanilla, the
Gaussian center penalty and the annotation-mask penalty on a *map* of the tokens (``MAPS``;
``center_cam`` / ``mask_cam``: the class activation maps of the token grid, which for this
GAP + linear head are also its Grad-CAM; ``center_chefer`` / ``mask_chefer`` and
``center_rollout`` / ``mask_rollout``: Chefer et al.'s relevance and attention rollout of the
input tokens, :class:`xai_feedback.relevance.AttentionCapture`), RobustViT's relevance loss on
the confound masks plus cross-entropy (``robustvit``), counterexamples of the annotated region
(Teso & Kersting 2019), annotation-free counterexamples of the center prior's periphery, and
the oracle (trained with the shortcut's level random). It reports accuracy on test digits with the
shortcut random (confound-test) and absent (clean-test), mean ± std over seeds, and per family
the best annotation arm's gap to the oracle and the map of the best penalty arm.

Hyper-parameters were fixed before any test run, on a validation split (20 %) of the *frame*
family's training images, seed 0 (``--select``): first the training recipe (learning rate and
epochs, by the oracle's accuracy on the validation images with the frame's level random), then
each map penalty's weight with that recipe (by the same accuracy). Those picked are the
constants below; the periphery arm keeps the CNN battery's prior (``_arms.py``). The relevance
maps sum to about 1 over the 49 tokens (the CAMs are of order 1 per token), so their weights
were gridded over ``RELEVANCE_SELECT_WEIGHTS`` (``--select-weights 1000,10000,100000``).

Extension point (maps and arms). A map is ``fn(model, images, labels) -> (logits, maps)``:
the logits of a forward pass and differentiable maps, ``(B, K, h, w)`` for every class or
``(B, h, w)`` for ``labels`` (the penalties accept both). :func:`register_map` adds one to
``MAPS`` with its center and mask weights and creates its arms ``center_<name>`` and
``mask_<name>``; an arm with an objective of its own (e.g. a RobustViT loss) is added with
:func:`register_arm`. ``--select`` then grids the new map's weights with ``--maps NAME``.

Each finished run is kept in a run store under ``OUT/runs/tinyvit/<family>/<arm>/seed<N>.json``
(``OUT/select/...`` for ``--select``), fingerprinted by its settings; a rerun resumes. Run
``python benchmarks/vit_confounds.py [--seeds 3]`` or ``xai-feedback bench vit_confounds``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import _common as common
import torch
import torch.nn.functional as F
from _arms import ARMS as CNN_ARMS
from _arms import Arm, applies
from torch import nn

from xai_feedback.counterexamples import Counterexamples
from xai_feedback.data import CONFOUND_FAMILIES, ImageDataset, confounded_digits, train_val_split
from xai_feedback.data.confounds import SHORTCUT_FAMILIES
from xai_feedback.functional import DEFAULT_SIGMA
from xai_feedback.hooks import CAMHook
from xai_feedback.losses import CenterPenalty, MapPenalty, MaskPenalty, RobustViTPenalty
from xai_feedback.models import TinyViT
from xai_feedback.objectives import (
    contribution_penalty_objective,
    prediction_difference_objective,
    random_class_signs,
    relevance_penalty_objective,
)
from xai_feedback.relevance import AttentionCapture
from xai_feedback.training import Batch, Objective, accuracy, fit

__all__ = [
    "ARMS",
    "MAPS",
    "MapFn",
    "ViTRecipe",
    "main",
    "map_penalty_objective",
    "register_arm",
    "register_map",
    "relevance_map",
    "robustvit_arm",
    "run_vit",
    "token_cam",
]

MapFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``fn(model, images, labels) -> (logits, maps)``: maps ``(B, K, h, w)`` or ``(B, h, w)``."""


@dataclass(frozen=True)
class ViTRecipe:
    """How every arm trains the ViT: Adam + one-cycle (``training.fit``) and the model's size."""

    lr: float = 3e-3
    epochs: int = 10
    batch_size: int = 32
    dim: int = 64
    depth: int = 4
    heads: int = 4

    def settings(self) -> dict[str, Any]:
        """The recipe as JSON-ready settings (part of each run's fingerprint)."""
        return dataclasses.asdict(self)


# Fixed with ``--select`` on a validation split of the frame family (seed 0), before any test run.
RECIPE = ViTRecipe(lr=3e-3, epochs=10, batch_size=32)
MASK_DILATION = 4  # the CNN battery's annotation dilation (``_arms.MASK_DILATION``)

SELECT_LRS = (1e-3, 3e-3)
SELECT_EPOCHS = (10, 15)
SELECT_WEIGHTS = (1.0, 10.0, 100.0)
RELEVANCE_SELECT_WEIGHTS = (1e3, 1e4, 1e5)  # maps of about 1/49 per token
VALIDATION_FRACTION = 0.2


def token_cam(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed all-class CAMs of the token grid ``(B, K, 7, 7)`` (= Grad-CAM for a GAP head)."""
    with CAMHook(model) as hook:
        logits = model(images)
        maps = hook.maps(logits, all_classes=True)
    return logits, maps


def token_cam_label(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed CAMs of the token grid of the labels' class only ``(B, 7, 7)``.

    The one-class counterpart of :func:`token_cam`: on a model without a GAP head it costs
    one backward instead of ``K`` (issue 27's target-class step); the arms on it ask whether
    penalizing the label's map alone keeps the all-class figures.
    """
    with CAMHook(model) as hook:
        logits = model(images)
        maps = hook.maps(logits, labels)
    return logits, maps


def relevance_map(method: str) -> MapFn:
    """A map of the labels' class ``(B, 7, 7)`` by a relevance ``method`` of the library.

    ``"chefer_relevance"`` (Chefer et al. 2021) or ``"rollout"`` (Abnar & Zuidema 2020, the
    same map for every class), read by :class:`~xai_feedback.relevance.AttentionCapture` from
    the forward's attention probabilities (mean of the patch rows: TinyViT average-pools its
    tokens). The gradients inside Chefer's maps are constants (``create_graph=False``, as
    RobustViT): the penalty trains the model through the attention probabilities.
    """

    def fn(
        model: nn.Module, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with AttentionCapture(model) as capture:
            logits = model(images)
            maps = capture.maps(logits, labels, method=method, create_graph=False)
        return logits, maps

    return fn


def map_penalty_objective(map_fn: MapFn, penalty: MapPenalty, weight: float) -> Objective:
    """Cross-entropy plus ``weight`` times ``penalty`` on the maps ``map_fn`` computes."""

    def objective(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits, maps = map_fn(model, batch.images, batch.labels)
        value = penalty(maps, target=batch.labels, masks=batch.masks)
        return F.cross_entropy(logits, batch.labels) + weight * value, logits

    return objective


def _penalty(kind: str) -> MapPenalty:
    if kind == "center":
        return CenterPenalty()
    return MaskPenalty(dilation=MASK_DILATION)


def _penalty_arm(map_name: str, kind: str, weight: float) -> Arm:
    what = (
        f"Gaussian center penalty (sigma {DEFAULT_SIGMA})"
        if kind == "center"
        else f"annotation-mask penalty (dilation {MASK_DILATION} px)"
    )
    return Arm(
        f"{kind}_{map_name}",
        f"{what} on {map_name} maps, signed, lambda {weight:g}",
        lambda seed, train: map_penalty_objective(MAPS[map_name], _penalty(kind), weight),
        annotated=kind == "mask",
    )


MAPS: dict[str, MapFn] = {}
"""The maps a penalty arm can use, by name (see :func:`register_map`)."""

MAP_OF: dict[str, str] = {}
"""Penalty arm name -> the name of the map it penalizes."""

ARMS: dict[str, Arm] = {
    name: CNN_ARMS[name] for name in ("vanilla", "counterexamples", "periphery", "oracle")
}
"""The ViT battery's arms: the CNN battery's data-side arms and the map penalties' arms."""


def register_arm(arm: Arm) -> Arm:
    """Add ``arm`` to :data:`ARMS` (its name must be new)."""
    if arm.name in ARMS:
        raise ValueError(f"an arm named {arm.name!r} is already registered")
    ARMS[arm.name] = arm
    return arm


def register_map(name: str, fn: MapFn, *, center: float, mask: float) -> None:
    """Add the map ``fn`` to :data:`MAPS` and its arms ``center_<name>``, ``mask_<name>``.

    ``center`` and ``mask`` are the penalty weights (fixed with ``--select --maps NAME``).
    """
    if name in MAPS:
        raise ValueError(f"a map named {name!r} is already registered")
    MAPS[name] = fn
    for kind, weight in (("center", center), ("mask", mask)):
        arm = register_arm(_penalty_arm(name, kind, weight))
        MAP_OF[arm.name] = name


WEIGHTED_ARMS: dict[str, Callable[[float], Arm]] = {}
"""Arms with an objective of their own and one weight ``--select`` grids, by name."""


def robustvit_arm(weight: float) -> Arm:
    """RobustViT's relevance loss on the confound masks, plus cross-entropy on the labels.

    ``relevance_penalty_objective(RobustViTPenalty(marks="excluded"), weight)`` on Chefer
    relevance of the labels' class (gradients constant, as the reference). Without RobustViT's
    own-prediction term (``classification=0``): it keeps a *pretrained* model's predictions
    while the labels are not used; here the labels' cross-entropy is in the loss and the model
    is trained from scratch, so the term would only reinforce its early (random, later
    shortcut-driven) predictions.
    """
    return Arm(
        "robustvit",
        f"RobustViT loss (bg 2, fg 0.3, min-max) on Chefer relevance, foreground = not the "
        f"confound, + cross-entropy, lambda {weight:g}",
        lambda seed, train: relevance_penalty_objective(
            RobustViTPenalty(marks="excluded"),
            weight,
            method="chefer_relevance",
            create_graph=False,
            classification=0.0,
        ),
        annotated=True,
    )


WEIGHTED_ARMS["robustvit"] = robustvit_arm


def contribution_arm(weight: float) -> Arm:
    """The contribution penalty on the token grid: HiResCAM of the summed log-probabilities.

    :func:`~xai_feedback.objectives.contribution_penalty_objective` at ``token_grid`` (the
    layer the CAM arms use), on the annotation: the CNNs' winner on Decoy-FMNIST (issue 26),
    carried to the ViT as it is (one gradient from the logits to the tokens, every class).
    """
    return Arm(
        "contribution",
        f"contribution penalty (HiResCAM of the summed log-probabilities, token grid), "
        f"lambda {weight:g}",
        lambda seed, train: contribution_penalty_objective(None, weight),
        annotated=True,
    )


WEIGHTED_ARMS["contribution"] = contribution_arm


def difference_arm(weight: float) -> Arm:
    """The prediction-difference penalty: the annotated region's effect on the prediction.

    :func:`~xai_feedback.objectives.prediction_difference_objective`: the KL divergence
    between each image's prediction and that of the image with the annotated region taken
    from another image of the batch (``fill="swap"``), on the input (no layer, no map of
    tokens): the winner of ``bench realworld`` (issue 26), carried to the ViT as it is.
    """

    def build(seed: int, train: ImageDataset) -> Objective:
        g = torch.Generator().manual_seed(10_000 + seed)
        return prediction_difference_objective(
            weight, augment=Counterexamples(fill="swap", generator=g)
        )

    return Arm(
        "difference",
        f"prediction-difference penalty (KL to the prediction with the region swapped), "
        f"lambda {weight:g}",
        build,
        annotated=True,
    )


WEIGHTED_ARMS["difference"] = difference_arm


def mask_cam_projected_arm(weight: float) -> Arm:
    r"""The all-class mask penalty on token CAMs, estimated from one map per image.

    ``MaskPenalty(classes="projected")`` on the map of the score
    :math:`\sum_k v_k y_k` with random signs :math:`v = \pm 1/\sqrt K` (drawn from a
    generator seeded by the run's seed): an unbiased estimate of ``mask_cam``'s penalty at
    the cost of one class (issue 27: the all-class ViT step at the label class's cost).
    """

    def build(seed: int, train: ImageDataset) -> Objective:
        generator = torch.Generator().manual_seed(10_000 + seed)
        penalty = MaskPenalty(classes="projected", dilation=MASK_DILATION)

        def maps(
            model: nn.Module, images: torch.Tensor, labels: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            with CAMHook(model) as hook:
                logits = model(images)
                mixed = hook.maps(logits, random_class_signs(logits, generator))
            return logits, mixed

        return map_penalty_objective(maps, penalty, weight)

    return Arm(
        "mask_cam_projected",
        f"annotation-mask penalty (dilation {MASK_DILATION} px) on all classes' token CAMs, "
        f"estimated from one random-sign mix per image, lambda {weight:g}",
        build,
        annotated=True,
    )


WEIGHTED_ARMS["mask_cam_projected"] = mask_cam_projected_arm

# weights fixed with ``--select`` (frame, validation split, seed 0)
register_map("cam", token_cam, center=10.0, mask=10.0)
# --select --maps cam_label --select-kinds mask: 1 / 10 / 100 -> val random .413 / .302 / .156
register_map("cam_label", token_cam_label, center=10.0, mask=1.0)
register_map("chefer", relevance_map("chefer_relevance"), center=1e6, mask=1e7)
register_map("rollout", relevance_map("rollout"), center=1e4, mask=1e6)
register_arm(robustvit_arm(1.0))
register_arm(contribution_arm(10.0))  # --select: 1 / 10 / 100 -> val random 0.389 / 0.403 / 0.361
# --select-arms mask_cam_projected: 1 / 10 / 100 -> val random .569 / .601 / .184
register_arm(mask_cam_projected_arm(10.0))
# --select-arms difference: 1 / 10 / 100 -> val random .955 / .955 / .934 (clean .774 / .941 / .917)
register_arm(difference_arm(10.0))

DEFAULT_ARMS = ("vanilla", "center_cam", "mask_cam", "counterexamples", "periphery", "oracle")
DEFAULT_FAMILIES = SHORTCUT_FAMILIES


def run_vit(
    family: str,
    arm: Arm,
    seed: int,
    recipe: ViTRecipe,
    *,
    train: ImageDataset | None = None,
    evals: dict[str, ImageDataset] | None = None,
) -> dict[str, Any]:
    """Train a fresh TinyViT with ``arm`` and return its JSON-ready record.

    ``train`` defaults to ``family``'s training digits (level tied, or random for the oracle);
    ``evals`` to its test digits with the shortcut random (``confound_test``) and absent
    (``clean_test``).
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
    generator = torch.Generator().manual_seed(seed)
    model = TinyViT(dim=recipe.dim, depth=recipe.depth, heads=recipe.heads, generator=generator)
    history = fit(
        model,
        train,
        epochs=recipe.epochs,
        lr=recipe.lr,
        batch_size=recipe.batch_size,
        objective=arm.make(seed, train),
        generator=generator,
    )
    record: dict[str, Any] = {
        "arch": "tinyvit",
        "family": family,
        "arm": arm.name,
        "seed": seed,
        **recipe.settings(),
        "train_accuracy": history.accuracy[-1],
        "seconds_per_epoch": history.seconds_per_epoch,
    }
    for name, data in evals.items():
        record[f"{name}_accuracy"] = accuracy(model, data)
    return record


def _values(records: list[dict[str, Any]], family: str, arm: str, key: str) -> list[float]:
    return [float(r[key]) for r in records if (r["family"], r["arm"]) == (family, arm)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summary(records: list[dict[str, Any]], families: Sequence[str], arms: Sequence[str]) -> str:
    """Per family: the best annotation arm's gap to the oracle, and the best penalty's map."""
    key = "confound_test_accuracy"
    rows = []
    for family in families:
        oracle = _mean(_values(records, family, "oracle", key))
        annotated = [a for a in arms if ARMS[a].annotated and not ARMS[a].oracle]
        scored = [(a, _mean(_values(records, family, a, key))) for a in annotated]
        scored = [(a, m) for a, m in scored if not math.isnan(m)]
        penalties = [(a, _mean(_values(records, family, a, key))) for a in arms if a in MAP_OF]
        penalties = [(a, m) for a, m in penalties if not math.isnan(m)]
        row: list[object] = [family]
        if scored and not math.isnan(oracle):
            best, value = max(scored, key=lambda t: t[1])
            gap = 100 * (oracle - value)
            row += [
                best,
                f"{value:.3f}",
                f"{oracle:.3f}",
                f"{gap:+.1f}",
                "yes" if gap <= 3 else "no",
            ]
        else:
            row += ["-"] * 5
        if penalties:
            best_pen, value = max(penalties, key=lambda t: t[1])
            row += [f"{best_pen} ({MAP_OF[best_pen]}, {value:.3f})"]
        else:
            row += ["-"]
        rows.append(row)
    header = [
        "family",
        "best annotation arm",
        "its acc",
        "oracle",
        "gap (points)",
        "within 3",
        "best penalty (map, acc)",
    ]
    return common.markdown_table(header, rows)


def tables(records: list[dict[str, Any]], families: Sequence[str], arms: Sequence[str]) -> str:
    """Confound-test and clean-test tables (mean ± std over seeds) and the summary."""
    parts = []
    for key, title in (("confound_test", "confound-test"), ("clean_test", "clean-test")):
        rows = []
        for family in families:
            row: list[object] = [family]
            counts = []
            for arm in arms:
                if not applies(ARMS[arm], family):
                    row.append("= vanilla")
                    continue
                values = _values(records, family, arm, f"{key}_accuracy")
                row.append(common.mean_std(values))
                counts.append(str(len(values)))
            rows.append([*row, ",".join(counts)])
        parts.append(f"**tinyvit, {title} accuracy** (mean ± std over seeds)\n")
        parts.append(common.markdown_table(["family", *arms, "n (per arm)"], rows) + "\n")
    parts.append("**best annotation arm vs oracle; best map penalty** (confound-test)\n")
    parts.append(summary(records, families, arms) + "\n")
    return "\n".join(parts)


def _select(args: Any, base: ViTRecipe) -> int:
    """The validation grid: the recipe by the oracle, then each map penalty's weight.

    ``base`` gives the model's size and the batch; the grid sets its learning rate and epochs.
    """
    family = args.family
    split = partial(train_val_split, val_fraction=VALIDATION_FRACTION, seed=0)
    train, val_tied = split(confounded_digits("train", family))
    train_random, val_random = split(confounded_digits("train", family, rule="random"))
    _, val_clean = split(confounded_digits("train", family, rule="none"))
    evals = {"val_tied": val_tied, "val_random": val_random, "val_clean": val_clean}
    store = common.settings_store(args.out / "select")
    print(f"validation: {len(val_random)} held-out {family} training images; tied / random / none")

    def run(arm: Arm, recipe: ViTRecipe, data: ImageDataset) -> dict[str, Any]:
        settings = {"family": family, "arm": arm.name, "what": arm.description, "seed": 0}
        settings |= {**recipe.settings(), "validation_fraction": VALIDATION_FRACTION}
        parts = ["tinyvit", family, arm.name.replace(":", "_"), f"lr{recipe.lr:g}_e{recipe.epochs}"]
        record = common.resume_run(
            store,
            [*parts, "seed0"],
            settings,
            partial(run_vit, family, arm, 0, recipe, train=data, evals=evals),
            fresh=args.fresh,
        )
        print(
            f"| {arm.name} | {recipe.lr:g} | {recipe.epochs} | {record['val_tied_accuracy']:.3f} "
            f"| {record['val_random_accuracy']:.3f} | {record['val_clean_accuracy']:.3f} |",
            flush=True,
        )
        return record

    header = "| arm | lr | epochs | val (tied) | val (random) | val (no shortcut) |"
    print(f"{header}\n|---|---|---|---|---|---|")
    recipes = [
        dataclasses.replace(base, lr=lr, epochs=epochs)
        for lr in args.select_lrs
        for epochs in args.select_epochs
    ]
    oracle = ARMS["oracle"]
    scores = [(run(oracle, r, train_random)["val_random_accuracy"], r) for r in recipes]
    best_recipe = max(scores, key=lambda t: t[0])[1]
    chosen = [f"recipe: lr {best_recipe.lr:g}, {best_recipe.epochs} epochs (oracle)"]
    for map_name in args.maps:
        for kind in args.select_kinds:
            results = []
            for weight in args.select_weights:
                arm = _penalty_arm(map_name, kind, weight)
                arm = Arm(f"{arm.name}:lam={weight:g}", arm.description, arm.make, arm.annotated)
                results.append((run(arm, best_recipe, train)["val_random_accuracy"], weight))
            score, weight = max(results)
            chosen.append(f"{kind}_{map_name}: lambda {weight:g} (val random {score:.3f})")
    for name in args.select_arms:
        results = []
        for weight in args.select_weights:
            arm = WEIGHTED_ARMS[name](weight)
            arm = Arm(f"{arm.name}:lam={weight:g}", arm.description, arm.make, arm.annotated)
            results.append((run(arm, best_recipe, train)["val_random_accuracy"], weight))
        score, weight = max(results)
        chosen.append(f"{name}: lambda {weight:g} (val random {score:.3f})")
    print("\nchosen on the validation split: " + "; ".join(chosen))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the battery (or ``--select``); see ``xai-feedback bench vit_confounds --help``."""
    from tqdm.auto import tqdm

    quick = [
        "--families",
        "frame",
        "--arms",
        "vanilla,mask_cam",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--dim",
        "16",
        "--depth",
        "1",
        "--select-lrs",
        "0.003",
        "--select-epochs",
        "1",
        "--select-weights",
        "10",
        "--maps",
        "cam",
        "--select-arms",
        "",
    ]
    parser = common.parser("vit_confounds", __doc__, seeds=3, quick=quick)
    split = lambda s: s.split(",")  # noqa: E731
    parser.add_argument("--families", default=",".join(DEFAULT_FAMILIES), type=split)
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS), type=split)
    parser.add_argument("--epochs", type=int, default=RECIPE.epochs)
    parser.add_argument("--lr", type=float, default=RECIPE.lr)
    parser.add_argument("--dim", type=int, default=RECIPE.dim, help="token width")
    parser.add_argument("--depth", type=int, default=RECIPE.depth, help="transformer blocks")
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="run seeds FIRST_SEED ... FIRST_SEED + SEEDS - 1 (to share the runs between "
        "processes writing to one --out)",
    )
    parser.add_argument("--fresh", action="store_true", help="ignore finished runs in --out")
    parser.add_argument(
        "--report-only", action="store_true", help="tabulate the finished runs, train nothing"
    )
    parser.add_argument("--select", action="store_true", help="run the validation grid")
    parser.add_argument("--family", default="frame", help="--select: the family split")
    parser.add_argument("--maps", default=",".join(MAPS), type=split, help="--select: maps")
    parser.add_argument(
        "--select-kinds",
        default="center,mask",
        type=lambda s: [v for v in s.split(",") if v],
        help="--select: the map penalties gridded (center, mask)",
    )
    parser.add_argument(
        "--select-arms",
        default=",".join(WEIGHTED_ARMS),
        type=lambda s: [v for v in s.split(",") if v],
        help="--select: arms with a weight of their own",
    )
    floats = lambda s: [float(v) for v in s.split(",")]  # noqa: E731
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    parser.add_argument("--select-lrs", default=SELECT_LRS, type=floats)
    parser.add_argument("--select-epochs", default=SELECT_EPOCHS, type=ints)
    parser.add_argument("--select-weights", default=SELECT_WEIGHTS, type=floats)
    args = common.parse(parser, argv)
    for values, known, what in (
        (args.families, CONFOUND_FAMILIES, "family"),
        (args.arms, ARMS, "arm"),
        (args.maps, MAPS, "map"),
        (args.select_arms, WEIGHTED_ARMS, "arm"),
        (args.select_kinds, ("center", "mask"), "penalty kind"),
        ([args.family], CONFOUND_FAMILIES, "family"),
    ):
        for v in values:
            if v not in known:
                parser.error(f"unknown {what} {v!r}; choose from {sorted(known)}")
    recipe = ViTRecipe(
        lr=args.lr,
        epochs=args.epochs,
        batch_size=RECIPE.batch_size,
        dim=args.dim,
        depth=args.depth,
        heads=RECIPE.heads if args.dim % RECIPE.heads == 0 else 1,
    )
    if args.select:
        args.out.mkdir(parents=True, exist_ok=True)
        return _select(args, recipe)

    store = common.settings_store(args.out / "runs")
    jobs = [
        (seed, family, arm)
        for seed in range(args.first_seed, args.first_seed + args.seeds)
        for family in args.families
        for arm in args.arms
        if applies(ARMS[arm], family)
    ]
    records = []
    start = time.perf_counter()
    for seed, family, arm in tqdm(jobs, desc="ViT confound battery"):
        parts = ["tinyvit", family, arm, f"seed{seed}"]
        settings = {"family": family, "arm": arm, "what": ARMS[arm].description, "seed": seed}
        settings |= recipe.settings()
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
                partial(run_vit, family, ARMS[arm], seed, recipe),
                fresh=args.fresh,
            )
        )
    text = tables(records, args.families, args.arms)
    print(
        f"\nViT confound battery: TinyViT(dim {recipe.dim}, depth {recipe.depth}), lr "
        f"{recipe.lr:g}, {recipe.epochs} epochs, batch {recipe.batch_size}, seeds "
        f"{args.first_seed}-{args.first_seed + args.seeds - 1}, torch threads "
        f"{torch.get_num_threads()}, {time.perf_counter() - start:.0f} s"
    )
    for name in args.arms:
        print(f"  {name:16s} {ARMS[name].description}")
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
