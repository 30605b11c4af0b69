r"""ROAD (Rong et al. 2022): remove pixels by attribution rank with noisy linear imputation.

No retraining. For each fraction :math:`f`, the :math:`\mathrm{round}(f \cdot HW)` most
relevant pixels (MoRF) or least relevant (LeRF) of each image are replaced by noisy linear
imputation (:func:`~xai_feedback.functional.imputation.noisy_linear_imputation`), which leaks
far less of the removed pattern than a constant fill; the model's accuracy and true-class
probability are recorded. A faithful method makes MoRF accuracy fall fast and LeRF slowly.
All images of a fraction are imputed and classified as one batch, on the model's device.

Reference:
    Y. Rong, T. Leemann, V. Borisov, G. Kasneci, E. Kasneci, "A Consistent and Efficient
    Evaluation Strategy for Attribution Methods", ICML 2022.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from xai_feedback._checks import check_choice, check_fractions, check_int, check_shape
from xai_feedback.errors import DTypeError
from xai_feedback.evaluation.results import Curves
from xai_feedback.functional.masking import REMOVALS, attribution_scores, rank_mask, remove_pixels

__all__ = ["ORDERS", "road"]

ORDERS = ("morf", "lerf")
"""Most-relevant-first and least-relevant-first removal."""

Attributions = torch.Tensor | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def method_scores(
    name: str,
    method: Attributions,
    images: torch.Tensor,
    labels: torch.Tensor,
    squared: bool,
    what: str = "attributions",
) -> torch.Tensor:
    """Per-pixel scores ``(N, H, W)`` of one method: given attributions or an explainer's.

    The attributions must match the images' ``N``, ``H`` and ``W``; errors name them
    ``methods[name] <what>``.
    """
    attributions = method(images, labels) if callable(method) else method
    if not isinstance(attributions, torch.Tensor):
        raise DTypeError(
            f"`methods[{name!r}]` must be a tensor or a callable, got {type(method).__name__}."
        )
    n, _, h, w = images.shape
    pattern = "N H W" if attributions.dim() == 3 else "N C H W"
    check_shape(attributions, pattern, f"methods[{name!r}] {what}", N=n, H=h, W=w)
    return attribution_scores(attributions.detach().to(images.device), squared=squared)


@torch.no_grad()
def road(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    methods: Mapping[str, Attributions],
    *,
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    orders: Sequence[str] = ORDERS,
    fill: str = "noisy_linear",
    noise: float = 0.01,
    squared: bool = False,
    random_baseline: bool = True,
    batch_size: int = 1024,
    dataset_mean: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Curves]:
    """ROAD curves of several attribution methods (and a random ranking) for one model.

    Args:
        model: The classifier (evaluated in eval mode; its ``training`` flag is restored).
        images: ``(N, C, H, W)``, on the model's device.
        labels: ``(N,)`` true classes.
        methods: ``{name: attributions}`` (``(N, C, H, W)`` or ``(N, H, W)``) or
            ``{name: explain(images, labels)}``.
        fractions: Fractions removed, each in (0, 1).
        orders: ``"morf"`` and/or ``"lerf"``.
        fill: Replacement (ROAD's ``"noisy_linear"`` by default; any of
            :data:`~xai_feedback.functional.masking.REMOVALS`).
        noise: Standard deviation of the imputation noise.
        squared: Rank by squared attributions.
        random_baseline: Add a ``"random"`` ranking (drawn from ``generator``).
        batch_size: Images imputed and classified at once.
        dataset_mean: Per-channel mean for ``fill="dataset_mean"``.
        generator: Source of the noise and of the random ranking.

    Returns:
        ``{"morf": Curves, "lerf": Curves}`` of accuracy, and ``"morf_probability"``,
        ``"lerf_probability"``: the mean softmax probability of the true class.

    Shape:
        - images: :math:`(N, C, H, W)`; labels: :math:`(N,)`; attributions:
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
    check_shape(labels, "N", "labels", N=dims["N"])
    fractions = check_fractions(fractions)
    for order in orders:
        check_choice(order, "orders", ORDERS)
    check_choice(fill, "fill", REMOVALS)
    check_int(batch_size, "batch_size", minimum=1)
    if not isinstance(methods, Mapping):
        raise DTypeError(
            f"`methods` must be a mapping name -> attributions, got {type(methods).__name__}."
        )
    scores: dict[str, torch.Tensor] = {}
    if random_baseline:
        n, _, h, w = images.shape
        scores["random"] = torch.rand(n, h, w, generator=generator, device="cpu").to(images.device)
    for name, method in methods.items():
        scores[name] = method_scores(name, method, images, labels, squared)
    curves = {}
    for order in orders:
        curves[order] = Curves(f"ROAD {order.upper()}", "accuracy", fractions)
        curves[f"{order}_probability"] = Curves(
            f"ROAD {order.upper()}", "true-class probability", fractions
        )
    was_training = model.training
    model.eval()
    try:
        for name, s in scores.items():
            for order in orders:
                for f in fractions:
                    correct = prob = 0.0
                    for start in range(0, len(images), batch_size):
                        x = images[start : start + batch_size]
                        y = labels[start : start + batch_size]
                        mask = rank_mask(
                            s[start : start + batch_size], f, most_relevant=order == "morf"
                        )
                        x = remove_pixels(
                            x,
                            mask,
                            fill,
                            dataset_mean=dataset_mean,
                            noise=noise,
                            generator=generator,
                        )
                        p = model(x).softmax(dim=1)
                        correct += float((p.argmax(dim=1) == y).sum())
                        prob += float(p.gather(1, y.view(-1, 1)).sum())
                    curves[order].add(name, f, correct / len(images))
                    curves[f"{order}_probability"].add(name, f, prob / len(images))
    finally:
        model.train(was_training)
    return curves
