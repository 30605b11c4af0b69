"""Attention models on the digits: accuracy (mean over seeds), parameters, time per epoch, maps.

Trains SimpleCNN (plain FC head), SimpleCNN with the CAM (GAP) head, SimpleCNN + CBAM, the
Residual Attention Network and WARN with the same recipe (Adam + one-cycle, ``--epochs``,
batch 64) for ``--seeds`` seeds each; each run is written atomically to ``OUT/runs`` and a
rerun resumes. The figure shows, for a few test images, each model's attention maps and its
Grad-CAM of the predicted class.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xai_feedback.bench._io import mean_std, read_json, write_json_atomic
from xai_feedback.data import load_digits
from xai_feedback.models import WARN, AttentionModel, ResidualAttentionNet, SimpleCNN
from xai_feedback.training import accuracy, fit

__all__ = ["MODELS", "main"]

MODELS: dict[str, Callable[[torch.Generator], nn.Module]] = {
    "SimpleCNN (FC head)": lambda g: SimpleCNN(width=32, head="fc", generator=g),
    "SimpleCNN + CAM head": lambda g: SimpleCNN(width=32, generator=g),
    "SimpleCNN + CBAM": lambda g: SimpleCNN(width=32, cbam=True, generator=g),
    "Residual Attention Net": lambda g: ResidualAttentionNet(width=8, generator=g),
    "WARN": lambda g: WARN(widen=2, units=1, heads=4, generator=g),
}
"""The models compared, as ``generator -> fresh model``."""


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def _figure(models: dict[str, nn.Module], path: Path, n_images: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xai_feedback.hooks import CAMHook

    test = load_digits("test")
    images = test.images[:n_images]
    rows: list[tuple[str, torch.Tensor]] = []
    for name, model in models.items():
        assert isinstance(model, AttentionModel)
        model.eval()
        with CAMHook(model) as hook:
            logits = model(images)
            cam = hook.cam(logits, None, method="grad_cam", relu=True, size=(28, 28))
        rows.append((f"{name}\nGrad-CAM", cam.detach()))
        for key, maps in model.attention_maps().items():
            up = torch.nn.functional.interpolate(
                maps.detach().unsqueeze(1), size=(28, 28), mode="bilinear"
            )
            rows.append((f"{name}\nattention {key}", up.squeeze(1)))
    fig, axes = plt.subplots(
        len(rows), n_images, figsize=(1.6 * n_images + 1.5, 1.5 * len(rows)), squeeze=False
    )
    for r, (label, maps) in enumerate(rows):
        for c in range(n_images):
            ax = axes[r][c]
            ax.imshow(images[c, 0].numpy(), cmap="gray")
            m = maps[c]
            ax.imshow((m / (m.max() + 1e-12)).numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; see ``xai-feedback bench attention --help``."""
    parser = argparse.ArgumentParser(
        prog="xai-feedback bench attention",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--models", default=",".join(MODELS), type=lambda s: s.split(","))
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attention"))
    args = parser.parse_args(argv)
    for name in args.models:
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; choose from {list(MODELS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    train, test = load_digits("train"), load_digits("test")
    last: dict[str, nn.Module] = {}
    rows = []
    for name in args.models:
        results: list[dict[str, Any]] = []
        for seed in range(args.seeds):
            path = args.out / "runs" / f"{_slug(name)}_seed{seed}.json"
            record = read_json(path)
            g = torch.Generator().manual_seed(seed)
            model = MODELS[name](g)
            if record is None or seed == args.seeds - 1:  # the last seed's model feeds the figure
                start = time.perf_counter()
                fit(model, train, epochs=args.epochs, generator=g, progress=f"{name} seed {seed}")
                seconds = time.perf_counter() - start
                if record is None:
                    record = {
                        "model": name,
                        "seed": seed,
                        "test_accuracy": accuracy(model, test),
                        "seconds_per_epoch": seconds / args.epochs,
                        "parameters": sum(p.numel() for p in model.parameters()),
                        "threads": torch.get_num_threads(),
                    }
                    write_json_atomic(path, record)
            results.append(record)
            last[name] = model
        accs = [r["test_accuracy"] for r in results]
        rows.append(
            f"| {name} | {mean_std(accs)} | {results[0]['parameters']:,} | "
            f"{statistics.fmean(r['seconds_per_epoch'] for r in results):.1f} | {len(results)} |"
        )
    table = "\n".join(
        [
            f"Digits (1437 train / 360 test), {args.epochs} epochs, "
            f"{torch.get_num_threads()} threads",
            "",
            "| model | test accuracy | parameters | s / epoch | seeds |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attention_models.md").write_text(table + "\n")
    print(table)
    try:
        _figure(last, args.out / "attention_maps.png")
        print(f"figure: {args.out / 'attention_maps.png'}")
    except ImportError:
        print("matplotlib is not installed: no figure (pip install 'xai-feedback[plot]')")
    return 0
