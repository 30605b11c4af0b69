"""Benchmark: Proxy Attention in the training loop (``xai-feedback bench proxy``).

1. Accuracy: the same model, the same epochs and the same fixed held-out test set, trained
   with the schedule ``--schedule`` (proxy steps "p") and with the same epochs and no proxy
   step, over several seeds, on the digits and on the frame-confounded digits.
2. Throughput of proxy-image generation for a batch, against a seed-style pipeline measured
   in the same run on the same model and batch: Grad-CAM++ maps moved to NumPy, each map
   resized and min-max scaled on its own, each image masked on its own (the flow of
   pytorch-grad-cam + the seed's loop, without the seed's per-image JPEG writes).
   pytorch-grad-cam itself needs torchvision, which cannot be installed beside the CPU torch
   build this project uses, so its steps are reproduced here with NumPy/SciPy.
Each accuracy run is written atomically to ``OUT/runs/...json`` and resumed if present.
Run: ``python benchmarks/proxy.py [--seeds 5]`` or ``xai-feedback bench proxy``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import _common as common
import numpy as np
import torch

from xai_feedback.data import confounded_digits, load_digits
from xai_feedback.demo import ConfoundSetup
from xai_feedback.hooks import ActivationHook
from xai_feedback.models import GAPNet
from xai_feedback.proxy import (
    ProxyAttention,
    ProxySchedule,
    explain,
    train_with_proxy,
)
from xai_feedback.training import accuracy, fit

__all__ = ["main", "seed_style_proxies"]


def _parse_schedule(text: str) -> ProxySchedule:
    return ProxySchedule([s if s == "p" else int(s) for s in text.split(",")])


def seed_style_proxies(
    model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, threshold: float
) -> np.ndarray:
    """The seed's pipeline: Grad-CAM++ maps in NumPy, then one image at a time.

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
    for i in range(len(x)):  # per image, as the seed did
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
        out: torch.Tensor = proxy(images, explain(model, images, labels, "grad_cam_pp"))
        return out

    def seed() -> np.ndarray:
        return seed_style_proxies(model, images, labels, 0.85)

    ours()
    seed()  # warm-up
    timings = {}
    for name, fn in (("xai_feedback (batched)", ours), ("seed-style (per image)", seed)):
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    agree = float((torch.as_tensor(seed()) == ours()).float().mean())
    print(
        f"\nProxy-image generation, batch {len(images)}, GAPNet(width={args.width}), "
        f"Grad-CAM++ at threshold 0.85, best of {args.repeats}, "
        f"{torch.get_num_threads()} torch threads:"
    )
    for name, seconds in timings.items():
        print(f"  {name:24s} {seconds * 1000:8.2f} ms   {len(images) / seconds:10.0f} images/s")
    ratio = timings["seed-style (per image)"] / timings["xai_feedback (batched)"]
    print(f"  speed-up: {ratio:.1f}x; identical pixels: {agree:.4f}")


def _run(
    args: argparse.Namespace, schedule: ProxySchedule, dataset: str, arm: str, seed: int
) -> dict[str, Any]:
    if dataset == "digits":
        train, tests = load_digits("train"), {"clean_test": load_digits("test")}
    else:
        tests = ConfoundSetup(kind="frame").datasets(seed)
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

    schedule = _parse_schedule(args.schedule)
    records = []
    jobs = [
        (d, arm, s)
        for d in args.datasets
        for s in range(args.seeds)
        for arm in ("baseline", "proxy")
    ]
    store = common.RunStore(args.out / "runs")
    for dataset, arm, seed in tqdm(jobs, desc="proxy benchmark"):
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


def _figure(args: argparse.Namespace, plt: Any) -> Any:
    train = confounded_digits("train", "frame")
    g = torch.Generator().manual_seed(0)
    model = GAPNet(width=args.width, generator=g)
    fit(model, train, epochs=1, generator=g)
    logits = model.eval()(train.images[:512])
    wrong = (logits.argmax(1) != train.labels[:512]).nonzero().flatten()[:6]
    x = train.images[wrong]
    maps = explain(model, x, logits[wrong].argmax(1), args.method)
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
        "--parts", default="throughput,accuracy,figure", type=lambda s: s.split(",")
    )
    args = common.parse(parser, argv)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
