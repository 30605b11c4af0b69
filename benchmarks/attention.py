"""Attention models on the digits: accuracy (mean over seeds), parameters, time per epoch, maps.

Trains SimpleCNN (plain FC head), SimpleCNN with the CAM (GAP) head, SimpleCNN + CBAM, the
Residual Attention Network and WARN with the same recipe (Adam + one-cycle, ``--epochs``,
batch 64) for ``--seeds`` seeds each; each run is written atomically to ``OUT/runs`` and a
rerun resumes. The figure shows, for a few test images, each model's attention maps and its
Grad-CAM of the predicted class. Run: ``python benchmarks/attention.py [--seeds 3]`` or
``xai-feedback bench attention``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import _common as common
import torch
from torch import nn

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


def _figure(models: dict[str, nn.Module], plt: Any, n_images: int = 4) -> Any:
    from xai_feedback.hooks import CAMHook

    test = load_digits("test")
    images = test.images[:n_images]
    rows: list[tuple[str, torch.Tensor]] = []
    for name, model in models.items():
        assert isinstance(model, AttentionModel)
        model.eval()
        with CAMHook(model) as hook:
            logits = model(images)
            cam = hook.maps(logits, None, method="grad_cam", relu=True, size=(28, 28))
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
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; see ``xai-feedback bench attention --help``."""
    parser = common.parser("attention", __doc__, seeds=3, quick=["--seeds", "1", "--epochs", "1"])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--models", default=",".join(MODELS), type=lambda s: s.split(","))
    args = common.parse(parser, argv)
    for name in args.models:
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; choose from {list(MODELS)}")
    train, test = load_digits("train"), load_digits("test")
    store = common.run_store(args.out / "runs")
    last: dict[str, nn.Module] = {}
    rows = []
    for name in args.models:
        results: list[dict[str, Any]] = []
        for seed in range(args.seeds):
            parts = [f"{_slug(name)}_seed{seed}"]
            record = common.cached(store, parts)
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
                    store.put(parts, record)
            results.append(record)
            last[name] = model
        rows.append(
            [
                name,
                common.mean_std([r["test_accuracy"] for r in results]),
                f"{results[0]['parameters']:,}",
                f"{statistics.fmean(r['seconds_per_epoch'] for r in results):.1f}",
                len(results),
            ]
        )
    header = ["model", "test accuracy", "parameters", "s / epoch", "seeds"]
    table = "\n".join(
        [
            f"Digits (1437 train / 360 test), {args.epochs} epochs, "
            f"{torch.get_num_threads()} threads",
            "",
            common.markdown_table(header, rows),
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attention_models.md").write_text(table + "\n")
    print(table)
    common.figure(args.out / "attention_maps.png", partial(_figure, last), dpi=100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
