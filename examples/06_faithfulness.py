"""Faithfulness of attribution maps on the digits: ROAD curves and a small ROAR/KAR sweep.

Run: python examples/06_faithfulness.py   (about two minutes on 2 CPU cores)
The sweep writes each run to ./faithfulness_runs as it finishes: interrupt it and run again.
"""

import torch

from xai_feedback.attribution import attribute
from xai_feedback.data import ImageDataset, load_digits
from xai_feedback.evaluation import RetrainSweep, road
from xai_feedback.models import GAPNet
from xai_feedback.training import accuracy, fit

torch.set_num_threads(2)
train, test = load_digits("train"), load_digits("test")


def train_fn(data: ImageDataset, generator: torch.Generator) -> torch.nn.Module:
    model = GAPNet(width=16, pools=2, generator=generator)
    fit(model, data, epochs=5, generator=generator)
    return model


base = train_fn(train, torch.Generator().manual_seed(0))
print(f"base model test accuracy {accuracy(base, test):.3f}")


def saliency(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return attribute(base, images, target, method="saliency")


def grad_cam(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return attribute(base, images, target, method="grad_cam")


methods = {"saliency": saliency, "grad_cam": grad_cam}
curves = road(base, test.images, test.labels, methods, fractions=[0.1, 0.3, 0.5, 0.7])
print(curves["morf"].table(), "\n")

sweep = RetrainSweep(train_fn, methods, fractions=[0.5, 0.9], repeats=1, store="faithfulness_runs")
results = sweep.run(train, test)
print(results["roar"].table(), "\n")
print(results["kar"].table())
