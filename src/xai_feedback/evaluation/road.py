r"""ROAD (Rong et al. 2022): remove pixels by attribution rank with noisy linear imputation.

No retraining. For each fraction :math:`f`, the :math:`\mathrm{round}(f \cdot HW)` most
relevant pixels (MoRF) or least relevant (LeRF) of each image are replaced by noisy linear
imputation (:func:`~xai_feedback.functional.imputation.noisy_linear_imputation`), which leaks
far less of the removed pattern than a constant fill; the model's accuracy and true-class
probability are recorded. A faithful method makes MoRF accuracy fall fast and LeRF slowly.
All images of a fraction are imputed and classified as one batch, on the model's device.

Reference: Rong et al., ICML 2022 (cited in full in :mod:`xai_feedback.functional.imputation`,
whose imputation ROAD uses).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product

import torch
from torch import nn

from xai_feedback._checks import check_choice, check_fractions, check_int, check_shape
from xai_feedback._modes import eval_mode
from xai_feedback.errors import DTypeError
from xai_feedback.evaluation._scores import (
    check_evaluation_inputs,
    method_scores,
    true_class_probability,
)
from xai_feedback.evaluation._types import AttributionSource
from xai_feedback.evaluation.results import Curves
from xai_feedback.functional.masking import REMOVALS, rank_mask, remove_pixels

__all__ = ["ORDERS", "method_scores", "road"]

ORDERS = ("morf", "lerf")
"""Removal orders: most-relevant-first (``"morf"``) and least-relevant-first (``"lerf"``)."""


@dataclass(frozen=True)
class _Removal:
    """How ROAD removes pixels: fill, noise, batch size and the random source."""

    fill: str
    noise: float
    batch_size: int
    dataset_mean: torch.Tensor | None
    generator: torch.Generator | None


def _point(
    model: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    scores: torch.Tensor,
    fraction: float,
    most_relevant: bool,
    removal: _Removal,
) -> tuple[float, float]:
    """Accuracy and mean true-class probability after removing ``fraction`` of the pixels."""
    correct = prob = 0.0
    for start in range(0, len(images), removal.batch_size):
        part = slice(start, start + removal.batch_size)
        y = target[part]
        mask = rank_mask(scores[part], fraction, most_relevant=most_relevant)
        x = remove_pixels(
            images[part],
            mask,
            removal.fill,
            dataset_mean=removal.dataset_mean,
            noise=removal.noise,
            generator=removal.generator,
        )
        p = model(x).softmax(dim=1)
        correct += float((p.argmax(dim=1) == y).sum())
        prob += float(true_class_probability(p, y).sum())
    return correct / len(images), prob / len(images)


def _all_scores(
    methods: Mapping[str, AttributionSource],
    images: torch.Tensor,
    target: torch.Tensor,
    squared: bool,
    random_baseline: bool,
    generator: torch.Generator | None,
) -> dict[str, torch.Tensor]:
    if not isinstance(methods, Mapping):
        raise DTypeError(
            f"`methods` must be a mapping name -> attributions, got {type(methods).__name__}."
        )
    scores: dict[str, torch.Tensor] = {}
    if random_baseline:
        n, _, h, w = images.shape
        scores["random"] = torch.rand(n, h, w, generator=generator, device="cpu").to(images.device)
    for name, method in methods.items():
        scores[name] = method_scores(name, method, images, target, squared)
    return scores


def _empty_curves(orders: Sequence[str], fractions: list[float]) -> dict[str, Curves]:
    curves = {}
    for order in orders:
        curves[order] = Curves(f"ROAD {order.upper()}", "accuracy", fractions)
        curves[f"{order}_probability"] = Curves(
            f"ROAD {order.upper()}", "true-class probability", fractions
        )
    return curves


@torch.no_grad()
def road(
    model: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    methods: Mapping[str, AttributionSource],
    *,
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    orders: Sequence[str] = ORDERS,
    fill: str = "noisy_linear",
    noise: float = 0.01,
    squared: bool = True,
    random_baseline: bool = True,
    batch_size: int = 1024,
    dataset_mean: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Curves]:
    """ROAD curves of several attribution methods (and a random ranking) for one model.

    Args:
        model: The classifier (evaluated in eval mode; its ``training`` flag is restored).
        images: ``(N, C, H, W)``, on the model's device.
        target: ``(N,)`` true class indices: the class each image is scored on, and the
            class an explainer in ``methods`` is asked to explain.
        methods: ``{name: attributions}`` (``(N, C, H, W)`` or ``(N, H, W)``) or
            ``{name: explain(images, target)}``.
        fractions: Fractions removed, each in (0, 1).
        orders: ``"morf"`` and/or ``"lerf"``.
        fill: Replacement (ROAD's ``"noisy_linear"`` by default; any of
            :data:`~xai_feedback.functional.masking.REMOVALS`).
        noise: Standard deviation of the imputation noise.
        squared: Rank pixels by the magnitude of their attribution (squares summed over
            channels; default, as in :class:`~xai_feedback.evaluation.RetrainSweep`). With
            ``False`` the signed channel sum ranks them: channels of opposite sign cancel,
            and a signed method's *least* relevant pixels are its most negative ones; use it
            to remove the evidence *for* the class first (magnitude removes evidence against
            it as well).
        random_baseline: Add a ``"random"`` ranking (drawn from ``generator``).
        batch_size: Images imputed and classified at once.
        dataset_mean: Per-channel mean for ``fill="dataset_mean"``.
        generator: Source of the noise and of the random ranking.

    Returns:
        ``{"morf": Curves, "lerf": Curves}`` of accuracy, and ``"morf_probability"``,
        ``"lerf_probability"``: the mean softmax probability of the true class.

    Shape:
        - images: :math:`(N, C, H, W)`; target: :math:`(N,)`; attributions:
          :math:`(N, C, H, W)` or :math:`(N, H, W)`.

    Example:
        >>> from xai_feedback.models import GAPNet
        >>> model = GAPNet(width=4, generator=torch.Generator().manual_seed(0)).eval()
        >>> x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
        >>> curves = road(model, x, y, {"intensity": x}, fractions=[0.2, 0.6])
        >>> curves["morf"].methods, len(curves["lerf"].mean("intensity"))
        (['random', 'intensity'], 2)
    """
    dims = check_shape(images, "N C H W", "images")
    check_shape(target, "N", "target", N=dims["N"])
    fractions = check_fractions(fractions)
    for order in orders:
        check_choice(order, "orders", ORDERS)
    check_choice(fill, "fill", REMOVALS)
    check_int(batch_size, "batch_size", minimum=1)
    check_evaluation_inputs(model, images, target)
    scores = _all_scores(methods, images, target, squared, random_baseline, generator)
    removal = _Removal(fill, noise, batch_size, dataset_mean, generator)
    curves = _empty_curves(orders, fractions)
    with eval_mode(model):
        for (name, s), order, f in product(scores.items(), orders, fractions):
            acc, prob = _point(model, images, target, s, f, order == "morf", removal)
            curves[order].add(name, f, acc)
            curves[f"{order}_probability"].add(name, f, prob)
    return curves
