"""Benchmark: Proxy Attention in the training loop (``xai-feedback bench proxy``).

1. Accuracy: the same model, the same epochs and the same fixed held-out test set, trained
   with the schedule ``--schedule`` (proxy steps "p") and with the same epochs and no proxy
   step, over several seeds, on the digits and on the frame-confounded digits.
2. Throughput of proxy-image generation for a batch, against a thesis-style pipeline measured
   in the same run on the same model and batch: Grad-CAM++ maps moved to NumPy, each map
   resized and min-max scaled on its own, each image masked on its own (the flow of
   pytorch-grad-cam + the Proxy Attention thesis' loop, without its per-image JPEG writes).
   pytorch-grad-cam itself needs torchvision, which cannot be installed beside the CPU torch
   build this project uses, so its steps are reproduced here with NumPy/SciPy.
3. Regimes (``--regimes``, not run by default): where could hard-example masking help?
   Few training images (100, 300 of the 1,437), harder data (digits shifted, occluded and
   noisy, generated from fixed seeds) and the thesis' own schedule ``5,p,9,p,9,p,4``. Each
   regime's proxy setting (a grid of at most four) is chosen on a validation split carved
   from the training images with ``--val-seeds`` seeds, then frozen and run on the fixed
   test split with ``--seeds`` seeds, against the same epochs without "p" and against a
   *copies* control: the same hard examples added unmodified (threshold 1 masks nothing),
   which separates "masking helps" from "more steps on hard examples help".
Each accuracy run is written atomically to ``OUT/runs/...json`` and resumed if present.
Run: ``python benchmarks/proxy.py [--seeds 5]`` or ``xai-feedback bench proxy``;
the regimes: ``xai-feedback bench proxy --regimes --seeds 5 --threads 1``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import _common as common
import numpy as np
import torch

from xai_feedback.attribution import attribute
from xai_feedback.data import ImageDataset, confounded_digits, load_digits, train_val_split
from xai_feedback.data.digits import CANVAS, MARGIN
from xai_feedback.demo import ConfoundSetup
from xai_feedback.hooks import ActivationHook
from xai_feedback.models import GAPNet
from xai_feedback.proxy import (
    ProxyAttention,
    ProxySchedule,
    train_with_proxy,
)
from xai_feedback.training import accuracy, fit

__all__ = ["REGIMES", "SETTINGS", "harden", "main", "thesis_style_proxies"]


def _parse_schedule(text: str) -> ProxySchedule:
    return ProxySchedule([s if s == "p" else int(s) for s in text.split(",")])


def thesis_style_proxies(
    model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, threshold: float
) -> np.ndarray:
    """The thesis' pipeline: Grad-CAM++ maps in NumPy, then one image at a time.

    As pytorch-grad-cam does: hooks keep the activations and (by a tensor hook) their
    gradient, the loss is a Python sum of each image's target score, ``loss.backward()``
    runs a full backward pass (into ``param.grad``), and everything moves to NumPy.
    """
    from scipy.ndimage import zoom

    model.eval()
    grads: list[torch.Tensor] = []
    with ActivationHook(model) as hook:
        logits = model(images)
        acts = hook.activations
        acts.register_hook(grads.append)  # type: ignore[no-untyped-call]
        loss = sum(logits[i, int(t)] for i, t in enumerate(targets))
        model.zero_grad()
        torch.autograd.backward(loss, retain_graph=True)
    model.zero_grad()
    a = acts.detach().cpu().numpy()
    g = grads[0].detach().cpu().numpy()
    # pytorch-grad-cam's GradCAMPlusPlus weights, in NumPy
    g2, g3 = g**2, g**3
    sum_a = a.sum(axis=(2, 3))
    aij = g2 / (2 * g2 + sum_a[:, :, None, None] * g3 + 1e-7)
    aij = np.where(g != 0, aij, 0)
    weights = (np.maximum(g, 0) * aij).sum(axis=(2, 3))
    cams = np.maximum((weights[:, :, None, None] * a).sum(axis=1), 0)
    x = images.detach().cpu().numpy()
    out = np.empty_like(x)
    height, width = x.shape[-2:]
    for i in range(len(x)):  # per image, as the thesis code did
        cam = zoom(cams[i], (height / cams.shape[1], width / cams.shape[2]), order=1)
        cam = cam - cam.min()
        cam = cam / (cam.max() + 1e-7)
        img = x[i].copy()
        mask = cam > threshold
        for c in range(img.shape[0]):
            img[c][mask] = 0.0
        out[i] = img
    return out


def _throughput(args: argparse.Namespace) -> None:
    data = load_digits("test")
    images, labels = data.images[: args.batch], data.labels[: args.batch]
    model = GAPNet(width=args.width, generator=torch.Generator().manual_seed(0))
    fit(model, load_digits("train"), epochs=2, generator=torch.Generator().manual_seed(0))
    model.eval()
    proxy = ProxyAttention(threshold=0.85)

    def ours() -> torch.Tensor:
        out: torch.Tensor = proxy(
            images, attribute(model, images, labels, method="grad_cam_pp", reduce="abs_sum")
        )
        return out

    def thesis() -> np.ndarray:
        return thesis_style_proxies(model, images, labels, 0.85)

    ours()
    thesis()  # warm-up
    timings = {}
    for name, fn in (("xai_feedback (batched)", ours), ("thesis-style (per image)", thesis)):
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    agree = float((torch.as_tensor(thesis()) == ours()).float().mean())
    print(
        f"\nProxy-image generation, batch {len(images)}, GAPNet(width={args.width}), "
        f"Grad-CAM++ at threshold 0.85, best of {args.repeats}, "
        f"{torch.get_num_threads()} torch threads:"
    )
    for name, seconds in timings.items():
        print(f"  {name:24s} {seconds * 1000:8.2f} ms   {len(images) / seconds:10.0f} images/s")
    ratio = timings["thesis-style (per image)"] / timings["xai_feedback (batched)"]
    print(f"  speed-up: {ratio:.1f}x; identical pixels: {agree:.4f}")


def _run(
    args: argparse.Namespace, schedule: ProxySchedule, dataset: str, arm: str, seed: int
) -> dict[str, Any]:
    if dataset == "digits":
        train, tests = load_digits("train"), {"clean_test": load_digits("test")}
    else:
        tests = ConfoundSetup(family="frame").datasets(seed)
        train = tests.pop("train")
    g = torch.Generator().manual_seed(seed)
    model = GAPNet(width=args.width, generator=g)
    plan = schedule if arm == "proxy" else schedule.without_proxies()
    start = time.perf_counter()
    history = train_with_proxy(
        model,
        train,
        plan,
        proxy=ProxyAttention(threshold=args.threshold),
        method=args.method,
        fraction=args.fraction,
        generator=g,
    )
    record: dict[str, Any] = {
        "dataset": dataset,
        "arm": arm,
        "seed": seed,
        "schedule": args.schedule,
        "seconds": time.perf_counter() - start,
        "proxies": sum(r.hard_examples for r in history.rounds),
    }
    for name, test in tests.items():
        record[f"{name}_accuracy"] = accuracy(model, test)
    return record


def _accuracy(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    from xai_feedback._progress import progress_enabled

    schedule = _parse_schedule(args.schedule)
    records = []
    jobs = [
        (d, arm, s)
        for d in args.datasets
        for s in range(args.seeds)
        for arm in ("baseline", "proxy")
    ]
    store = common.run_store(args.out / "runs")
    for dataset, arm, seed in tqdm(
        jobs, desc="proxy benchmark", disable=not progress_enabled(True)
    ):
        run = partial(_run, args, schedule, dataset, arm, seed)
        parts = [dataset, arm, f"seed{seed}"]
        records.append(common.resume(store, parts, run, schedule=args.schedule))
    print(
        f"\nProxy attention: GAPNet(width={args.width}), schedule {args.schedule} vs the same "
        f"epochs without 'p', {args.seeds} seeds, {args.method} maps, threshold {args.threshold}, "
        f"fraction {args.fraction} of the misclassified training images; fixed test split."
    )
    rows = []
    for dataset in args.datasets:
        for arm in ("baseline", "proxy"):
            rs = [r for r in records if r["dataset"] == dataset and r["arm"] == arm]
            cols = []
            for key in ("clean_test_accuracy", "confound_test_accuracy"):
                cols.append(common.mean_std([float(r[key]) for r in rs if key in r], digits=4))
            proxies = statistics.fmean(float(r["proxies"]) for r in rs)
            secs = statistics.fmean(float(r["seconds"]) for r in rs)
            rows.append([dataset, arm, *cols, f"{proxies:.1f}", f"{secs:.1f}"])
    header = ["data", "arm", "clean-test acc", "confound-test acc", "proxies made", "seconds"]
    print(common.markdown_table(header, rows))


@dataclass(frozen=True)
class Regime:
    """A training regime: how many training images (``None``: all), hard data or not."""

    size: int | None
    hard: bool
    schedule: str
    settings: tuple[str, ...]
    note: str


@dataclass(frozen=True)
class Setting:
    """Proxy hyper-parameters: which hard examples, how many, and the mask's threshold."""

    by: str
    fraction: float
    threshold: float

    def key(self) -> str:
        return f"{self.by}/{self.fraction}/{self.threshold}"


SETTINGS = {
    "thesis": Setting("misclassified", 0.2, 0.85),  # the thesis code's final settings
    "wrong-all": Setting("misclassified", 1.0, 0.85),
    "wrong-all-t0.5": Setting("misclassified", 1.0, 0.5),
    "loss-0.2": Setting("loss", 0.2, 0.85),
}
"""The grid: the thesis' choice, every wrong example, a larger mask, and the highest losses."""

GRID = tuple(SETTINGS)
REGIMES = {
    "n100": Regime(100, False, "10,p,10,p,10", GRID, "100 clean training images"),
    "n300": Regime(300, False, "6,p,6,p,6", GRID, "300 clean training images"),
    "hard": Regime(None, True, "4,p,4,p,4", GRID, "all training images, hard"),
    "thesis": Regime(300, True, "5,p,9,p,9,p,4", ("thesis",), "thesis' schedule, 300 hard"),
}
"""The regimes (the thesis regime keeps the thesis' own hyper-parameters: nothing to choose)."""

HARD = {"noise": 0.3, "shift": 3, "occlude": 8}
"""Hard digits: shift up to 3 px, an 8x8 black square over the digit area, noise sd 0.3."""
HARD_SEEDS = {"train": 1, "test": 2}
VAL_FRACTION, VAL_SPLIT_SEED = 0.2, 0


def harden(
    data: ImageDataset, seed: int, *, noise: float = 0.3, shift: int = 3, occlude: int = 8
) -> ImageDataset:
    """Harder digits, deterministic in ``seed``: translate, occlude, add Gaussian noise.

    Each image is shifted by up to ``shift`` pixels each way (the 4 px margin is empty, so
    rolling wraps only background), gets an ``occlude`` x ``occlude`` black square somewhere
    over the 20x20 digit area, then noise of standard deviation ``noise``, clipped to [0, 1].
    """
    g = torch.Generator().manual_seed(seed)
    x = data.images.clone()
    n = len(x)
    shifts = torch.randint(-shift, shift + 1, (n, 2), generator=g)
    for i in range(n):
        x[i] = torch.roll(x[i], (int(shifts[i, 0]), int(shifts[i, 1])), dims=(-2, -1))
    corner = torch.randint(MARGIN, CANVAS - MARGIN - occlude + 1, (n, 2), generator=g)
    pos = torch.arange(CANVAS)
    rows = (pos >= corner[:, :1]) & (pos < corner[:, :1] + occlude)
    cols = (pos >= corner[:, 1:]) & (pos < corner[:, 1:] + occlude)
    x = x.masked_fill((rows[:, :, None] & cols[:, None, :])[:, None], 0.0)
    x = (x + noise * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0.0, 1.0)
    return ImageDataset(x, data.labels, data.masks, f"{data.name}+hard")


def _stratified(data: ImageDataset, size: int | None, seed: int) -> ImageDataset:
    """``size`` images, the same number from each class, chosen by ``seed`` (all if None)."""
    if size is None or size >= len(data):
        return data
    g = torch.Generator().manual_seed(10_000 + seed)
    classes = int(data.labels.max()) + 1
    picks = []
    for k in range(classes):
        idx = (data.labels == k).nonzero().flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[: size // classes]])
    return data.subset(torch.cat(picks).sort().values)


def _regime_data(regime: Regime, phase: str, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """(training images, evaluation images): validation carved from the training split."""
    train, test = load_digits("train"), load_digits("test")
    if regime.hard:
        train = harden(train, HARD_SEEDS["train"], **HARD)  # type: ignore[arg-type]
        test = harden(test, HARD_SEEDS["test"], **HARD)  # type: ignore[arg-type]
    if phase == "val":
        train, test = train_val_split(train, VAL_FRACTION, seed=VAL_SPLIT_SEED)
    return _stratified(train, regime.size, seed), test


def _regime_run(
    args: argparse.Namespace,
    regime: Regime,
    schedule: ProxySchedule,
    phase: str,
    setting: Setting | None,
    seed: int,
    expected: dict[str, Any],
) -> dict[str, Any]:
    train, evaluation = _regime_data(regime, phase, seed)
    g = torch.Generator().manual_seed(seed)
    model = GAPNet(width=args.width, generator=g)
    plan = schedule if setting is not None else schedule.without_proxies()
    s = setting or SETTINGS["thesis"]
    start = time.perf_counter()
    history = train_with_proxy(
        model,
        train,
        plan,
        proxy=ProxyAttention(threshold=s.threshold),
        method=args.method,
        by=s.by,
        fraction=s.fraction,
        generator=g,
    )
    return {
        **expected,  # what a stored run must match to be resumed
        "phase": phase,
        "seed": seed,
        "train_size": len(train),
        "seconds": time.perf_counter() - start,
        "proxies": sum(r.hard_examples for r in history.rounds),
        "final_train_size": history.rounds[-1].training_size if history.rounds else len(train),
        "accuracy": accuracy(model, evaluation),
    }


def _paired(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> list[float]:
    """Per-seed differences ``b - a`` of accuracy (runs paired by seed)."""
    by_seed = {r["seed"]: float(r["accuracy"]) for r in a}
    return [float(r["accuracy"]) - by_seed[r["seed"]] for r in b if r["seed"] in by_seed]


def _regime_runs(
    args: argparse.Namespace,
    store: common.RunStore,
    name: str,
    phase: str,
    arm: str,
    setting: Setting | None,
    seeds: int,
) -> list[dict[str, Any]]:
    """The runs of one arm (``setting`` None: no proxy step), resumed from ``store``."""
    regime = REGIMES[name]
    text = args.regime_schedule or regime.schedule
    schedule = _parse_schedule(text)
    key = "none" if setting is None else setting.key()
    out = []
    for seed in range(seeds):
        expected = {"setting": key, "schedule": text, "width": args.width, "method": args.method}
        run = partial(_regime_run, args, regime, schedule, phase, setting, seed, expected)
        out.append(common.resume(store, [name, phase, arm, f"seed{seed}"], run, **expected))
    return out


def _mean(rs: Sequence[dict[str, Any]], key: str = "accuracy") -> float:
    return statistics.fmean(float(r[key]) for r in rs)


def _regimes(args: argparse.Namespace) -> None:
    store = common.run_store(args.out / "runs" / "regimes")
    val_rows: list[list[object]] = []
    test_rows: list[list[object]] = []
    for name in args.regime_list:
        regime = REGIMES[name]
        runs = partial(_regime_runs, args, store, name)
        base_val = runs("val", "baseline", None, args.val_seeds)
        val = {arm: runs("val", arm, SETTINGS[arm], args.val_seeds) for arm in regime.settings}
        chosen = max(regime.settings, key=lambda a: _mean(val[a]))  # ties: first in the grid
        val_rows.append([name, "baseline", "-", common.mean_std(_accs(base_val)), "-", 0])
        for arm, rs in val.items():
            val_rows.append(
                [
                    name,
                    f"**{arm}** (chosen)" if arm == chosen else arm,
                    SETTINGS[arm].key(),
                    common.mean_std(_accs(rs)),
                    f"{statistics.fmean(_paired(base_val, rs)):+.3f}",
                    f"{_mean(rs, 'proxies'):.0f}",
                ]
            )
        s = SETTINGS[chosen]
        copies = Setting(s.by, s.fraction, 1.0)  # threshold 1 masks nothing: plain copies
        arms = {
            "baseline": runs("test", "baseline", None, args.seeds),
            f"proxy ({chosen})": runs("test", f"proxy-{chosen}", s, args.seeds),
            f"copies ({chosen}, no mask)": runs("test", f"copies-{chosen}", copies, args.seeds),
        }
        base, copied = arms["baseline"], arms[f"copies ({chosen}, no mask)"]
        for arm, rs in arms.items():
            diffs = _paired(base, rs)
            masking = _paired(copied, rs) if arm.startswith("proxy") else []
            better, worse = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
            test_rows.append(
                [
                    name,
                    arm,
                    common.mean_std(_accs(rs)),
                    "-" if rs is base else common.mean_std(diffs),
                    "-" if rs is base else f"{better}/{worse}",
                    common.mean_std(masking) if masking else "-",
                    f"{_mean(rs, 'proxies'):.0f}",
                    f"{_mean(rs, 'seconds'):.1f}",
                ]
            )
    print(
        f"\nProxy attention regimes: GAPNet(width={args.width}), {args.method} maps of the "
        f"predicted class, masked pixels set to 0. Validation: {args.val_seeds} seeds, "
        f"{VAL_FRACTION:.0%} of the training images (split seed {VAL_SPLIT_SEED}); training "
        "subsets drawn from the rest. Paired diff: arm - baseline, per seed."
    )
    header = ["regime", "arm", "by/fraction/threshold", "val acc", "paired diff", "proxies"]
    print(common.markdown_table(header, val_rows))
    print(
        f"\nFixed test split (360 images), {args.seeds} seeds, the chosen setting frozen; "
        "copies: the same hard examples added unmodified; better/worse: seeds above/below "
        "the baseline; proxy - copies: what the masking adds, paired by seed."
    )
    header = ["regime", "arm", "test acc", "paired diff", "better/worse", "proxy - copies"]
    header += ["proxies", "s/run"]
    print(common.markdown_table(header, test_rows))


def _accs(rs: Sequence[dict[str, Any]]) -> list[float]:
    return [float(r["accuracy"]) for r in rs]


def _figure(args: argparse.Namespace, plt: Any) -> Any:
    train = confounded_digits("train", "frame")
    g = torch.Generator().manual_seed(0)
    model = GAPNet(width=args.width, generator=g)
    fit(model, train, epochs=1, generator=g)
    logits = model.eval()(train.images[:512])
    wrong = (logits.argmax(1) != train.labels[:512]).nonzero().flatten()[:6]
    x = train.images[wrong]
    maps = attribute(model, x, logits[wrong].argmax(1), method=args.method, reduce="abs_sum")
    proxies = ProxyAttention(threshold=args.threshold)(x, maps)
    fig, axes = plt.subplots(3, len(x), figsize=(1.6 * len(x), 5))
    for col in range(len(x)):
        for row, (img, title) in enumerate(
            ((x[col, 0], "original"), (maps[col], args.method), (proxies[col, 0], "proxy"))
        ):
            axes[row, col].imshow(img.detach().numpy(), cmap="gray" if row != 1 else "jet")
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if col == 0:
                axes[row, col].set_ylabel(title, fontsize=8)
    fig.suptitle("hard examples after one epoch: original / map / proxy image", fontsize=9)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; see ``xai-feedback bench proxy --help``."""
    quick = ["--datasets", "frame", "--schedule", "1,p,1", "--seeds", "1", "--width", "4"]
    quick += ["--regime-schedule", "1,p,1", "--val-seeds", "1", "--regime-list", "n100,seed"]
    parser = common.parser("proxy", __doc__, seeds=5, quick=[*quick, "--repeats", "2"])
    parser.add_argument("--datasets", default="digits,frame", type=lambda s: s.split(","))
    parser.add_argument("--schedule", default="4,p,4,p,4")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--method", default="grad_cam_pp")
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--batch", type=int, default=64, help="batch for the throughput test")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--parts",
        default="throughput,accuracy,figure",
        type=lambda s: s.split(","),
        help="throughput, accuracy, figure, regimes (the last only when asked for)",
    )
    parser.add_argument(
        "--regimes", action="store_true", help="run only the regimes part (--parts regimes)"
    )
    parser.add_argument(
        "--regime-list",
        default=",".join(REGIMES),
        type=lambda s: s.split(","),
        help=f"regimes to run, from {list(REGIMES)}",
    )
    parser.add_argument("--val-seeds", type=int, default=2, help="seeds of the validation runs")
    parser.add_argument(
        "--regime-schedule", default=None, help="override every regime's schedule (smoke tests)"
    )
    args = common.parse(parser, argv)
    if args.regimes:
        args.parts = ["regimes"]
    for name in args.regime_list:
        if name not in REGIMES:
            parser.error(f"unknown regime {name!r}; choose from {list(REGIMES)}")
    if args.regime_schedule is not None:
        _parse_schedule(args.regime_schedule)
    for name in args.datasets:
        if name not in ("digits", "frame"):
            parser.error(f"unknown dataset {name!r}; choose from ['digits', 'frame']")
    _parse_schedule(args.schedule)
    if "throughput" in args.parts:
        _throughput(args)
    if "accuracy" in args.parts:
        _accuracy(args)
    if "figure" in args.parts:
        common.figure(args.out / "proxy_examples.png", partial(_figure, args))
    if "regimes" in args.parts:
        _regimes(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
