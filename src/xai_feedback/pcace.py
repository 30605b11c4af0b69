r"""PCACE: rank a layer's channels by how much they say about a class (Breiman-Friedman ACE).

For one layer and one class :math:`c`, with :math:`N` images of that class:

1. capture the layer's activations :math:`A \in \mathbb{R}^{N \times C \times H \times W}`
   in one forward pass and read the class logit :math:`y = z_c` (pre-softmax);
2. for every channel, standardise its :math:`N \times HW` maps (each position to mean 0,
   variance 1) and reduce them with PCA to :math:`k` components
   :math:`x \in \mathbb{R}^{N \times k}`;
3. solve ACE for all channels at once (:func:`xai_feedback.functional.ace.ace`): transforms
   :math:`\phi_j(x_j)` and :math:`\theta(y)` maximizing the correlation;
4. score each channel by the maximal correlation
   :math:`\rho^* = \mathrm{corr}(\sum_j \phi_j(x_j), \theta(y))` and rank channels by it.

The seed scored only the first component, :math:`\mathrm{corr}(\phi_1, \theta)`, which equals
:math:`\rho^*` only for :math:`k = 1`; it is kept as ``score="first_component"`` for comparison.

Reference:
    Casacuberta et al., "PCACE: A Statistical Approach to Ranking Neurons for CNN
    Interpretability" (2021); Breiman & Friedman, JASA 80 (1985).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from xai_feedback._checks import (
    check_choice,
    check_finite,
    check_int,
    check_model_input,
    check_nonempty,
    check_shape,
)
from xai_feedback._modes import eval_mode
from xai_feedback.errors import DTypeError, LayerError, RangeError, ShapeError
from xai_feedback.functional.ace import ace
from xai_feedback.hooks import ActivationHook

__all__ = ["SCORES", "PCACEResult", "capture", "channel_components", "pcace"]

SCORES = ("max_corr", "first_component")
"""Channel scores: the maximal correlation (default) or the PCACE paper's first-component score."""


@dataclass(frozen=True)
class PCACEResult:
    r"""Channel scores of one layer for one class.

    Attributes:
        scores: The chosen score per channel, ``(C,)``.
        ranking: Channel indices, best first (ties keep channel order), ``(C,)``.
        max_correlation: :math:`\mathrm{corr}(\sum_j \phi_j, \theta)` per channel, ``(C,)``.
        first_component: :math:`\mathrm{corr}(\phi_1, \theta)` per channel, ``(C,)``.
        explained_variance_ratio: Share of each channel's variance in its components, ``(C, k)``.
        score: Which score ``scores`` holds.
        target: The class.
        n_observations: Images used.
    """

    scores: torch.Tensor
    ranking: torch.Tensor
    max_correlation: torch.Tensor
    first_component: torch.Tensor
    explained_variance_ratio: torch.Tensor
    score: str
    target: int
    n_observations: int

    def top(self, n: int) -> list[int]:
        """The ``n`` best channels."""
        return [int(c) for c in self.ranking[:n]]

    def bottom(self, n: int) -> list[int]:
        """The ``n`` worst channels, worst last."""
        return [int(c) for c in self.ranking[-n:]] if n > 0 else []

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            "score": self.score,
            "target": self.target,
            "n_observations": self.n_observations,
            "scores": self.scores.tolist(),
            "ranking": self.ranking.tolist(),
            "max_correlation": self.max_correlation.tolist(),
            "first_component": self.first_component.tolist(),
            "explained_variance_ratio": self.explained_variance_ratio.tolist(),
        }


def _batches(images: torch.Tensor | Iterable[Any], batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        check_shape(images, "N C H W", "images")
        check_nonempty(images, "images")
        yield from torch.split(images, batch_size)
        return
    for item in images:
        batch = item[0] if isinstance(item, list | tuple) else item
        if not isinstance(batch, torch.Tensor):
            raise DTypeError(
                f"`images` must be a tensor or an iterable of tensors / (images, ...) tuples, "
                f"got an item of type {type(batch).__name__}."
            )
        check_shape(batch, "N C H W", "images batch")
        yield batch


@torch.no_grad()
def capture(
    model: nn.Module,
    layer: nn.Module | str | None,
    images: torch.Tensor | Iterable[Any],
    *,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations of ``layer`` and the logits for all images, in eval mode, one pass.

    ``images`` is a tensor ``(N, C, H, W)`` or an iterable of batches (a ``DataLoader``
    yielding tensors or ``(images, labels)``). The model's ``training`` flag is restored.

    Returns:
        Activations ``(N, C', h, w)`` and logits ``(N, K)``.

    Raises:
        LayerError: The layer's output is not 4-D or the model's output not ``(N, K)``.
        RangeError: NaN or infinite activations.

    Shape:
        - images: :math:`(N, C, H, W)`; activations :math:`(N, C', h, w)`; logits :math:`(N, K)`.

    Example:
        >>> from xai_feedback.models import GAPNet
        >>> model = GAPNet(width=4, generator=torch.Generator().manual_seed(0))
        >>> acts, logits = capture(model, "features", torch.rand(6, 1, 28, 28), batch_size=4)
        >>> acts.shape, logits.shape
        (torch.Size([6, 16, 14, 14]), torch.Size([6, 10]))
    """
    check_int(batch_size, "batch_size", minimum=1)
    acts: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with eval_mode(model), ActivationHook(model, layer) as hook:
        for batch in _batches(images, batch_size):
            batch = batch.to(device)
            check_model_input(model, batch, "images")
            check_finite(batch, "images")
            out = model(batch)
            act = hook.activations
            if act.dim() != 4:
                raise LayerError(
                    f"the layer must yield 4-D activations (N, C, H, W), "
                    f"got shape {tuple(act.shape)}."
                )
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                raise LayerError("the model must return logits of shape (N, K).")
            acts.append(act)
            logits.append(out)
    if not acts or sum(int(a.shape[0]) for a in acts) == 0:
        raise ShapeError("`images` is empty: PCACE needs at least one image, got 0.")
    activations = torch.cat(acts)
    if not bool(torch.isfinite(activations).all()):
        bad = int((~torch.isfinite(activations)).sum())
        raise RangeError(f"the layer's activations hold {bad} NaN or infinite value(s).")
    return activations, torch.cat(logits)


def channel_components(
    activations: torch.Tensor, n_components: int
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Standardise each channel's maps and project them on their first principal components.

    Per channel, each of the :math:`HW` positions is standardised over the :math:`N` images
    (constant positions stay 0, as scikit-learn's ``StandardScaler``); the principal
    component scores come from a batched SVD with scikit-learn's sign convention (the
    largest loading of each component is positive), so they equal
    ``PCA(k, svd_solver="full").fit_transform(StandardScaler().fit_transform(maps))``.

    Args:
        activations: ``(N, C, H, W)``.
        n_components: :math:`k \le \min(N, HW)`.

    Returns:
        Scores ``(C, N, k)`` and explained-variance ratios ``(C, k)``.

    Shape:
        - activations: :math:`(N, C, H, W)` -> :math:`(C, N, k)`, :math:`(C, k)`.

    Example:
        >>> scores, ratio = channel_components(torch.rand(10, 3, 4, 4), 2)
        >>> scores.shape, ratio.shape
        (torch.Size([3, 10, 2]), torch.Size([3, 2]))
    """
    dims = check_shape(activations, "N C H W", "activations")
    n, hw = dims["N"], dims["H"] * dims["W"]
    check_int(n_components, "n_components", minimum=1)
    if n_components > min(n, hw):
        raise RangeError(
            f"`n_components` must be <= min(images, H*W) = min({n}, {hw}) = {min(n, hw)}, "
            f"got {n_components}."
        )
    maps = activations.flatten(2).transpose(0, 1)  # (C, N, HW)
    centered = maps - maps.mean(dim=1, keepdim=True)
    std = centered.std(dim=1, correction=0, keepdim=True)
    z = centered / torch.where(std > 0, std, torch.ones_like(std))
    # principal axes from the eigen-decomposition of the smaller Gram matrix (batched eigh
    # is several times faster than a batched SVD); scores are then projections z @ v
    if hw <= n:
        eigval, eigvec = torch.linalg.eigh(z.transpose(1, 2) @ z)  # (C, HW), ascending
        v = eigvec.flip(-1)[..., :n_components]  # (C, HW, k)
    else:
        eigval, eigvec = torch.linalg.eigh(z @ z.transpose(1, 2))  # (C, N)
        u = eigvec.flip(-1)[..., :n_components]
        v = z.transpose(1, 2) @ u
        v = v / v.norm(dim=1, keepdim=True).clamp(min=torch.finfo(z.dtype).tiny)
    variance = eigval.flip(-1)[..., :n_components].clamp(min=0)
    biggest = v.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(v.gather(1, biggest))
    v = v * torch.where(signs == 0, torch.ones_like(signs), signs)
    scores = z @ v
    total = (z * z).sum(dim=(1, 2))
    ratio = variance / torch.where(total > 0, total, torch.ones_like(total)).unsqueeze(1)
    return scores, ratio


def pcace(
    model: nn.Module,
    layer: nn.Module | str | None,
    images: torch.Tensor | Iterable[Any],
    target: int,
    *,
    n_components: int = 3,
    score: str = "max_corr",
    batch_size: int = 256,
    dtype: torch.dtype = torch.float64,
    **ace_options: Any,
) -> PCACEResult:
    """Rank the channels of ``layer`` for class ``target`` by PCA + ACE maximal correlation.

    Args:
        model: A classifier returning logits ``(N, K)``.
        layer: The layer (module, dotted name, or ``None`` for the model's default).
        images: Images of that class ``(N, C, H, W)``, or an iterable of batches.
        target: The class whose logit is the response.
        n_components: Principal components per channel (the ACE predictors).
        score: ``"max_corr"`` (default) or ``"first_component"`` (the PCACE paper's).
        batch_size: Forward batch size when ``images`` is a tensor.
        dtype: Dtype of the PCA and ACE (float64 by default).
        **ace_options: ``delrsq``, ``maxit``, ``nterm`` of :func:`~xai_feedback.functional.ace.ace`.

    Returns:
        A :class:`PCACEResult`. A channel whose activations are constant over the images
        (a dead ReLU) carries no information about the logit: both its scores are 0.

    Raises:
        RangeError: ``target`` out of range, too few images, ``n_components`` too large,
            NaN activations, or a class logit constant over the images.
        LayerError: The layer yields no 4-D activations.

    Shape:
        - images: :math:`(N, C, H, W)`; scores and ranking :math:`(C',)` for a layer of
          :math:`C'` channels.

    Example:
        >>> from xai_feedback.models import GAPNet
        >>> model = GAPNet(width=4, generator=torch.Generator().manual_seed(0))
        >>> images = torch.rand(30, 1, 28, 28, generator=torch.Generator().manual_seed(1))
        >>> result = pcace(model, "features", images, target=3, n_components=2)
        >>> result.scores.shape, result.ranking.shape
        (torch.Size([16]), torch.Size([16]))
    """
    check_choice(score, "score", SCORES)
    check_int(n_components, "n_components", minimum=1)
    if isinstance(target, bool) or not isinstance(target, int):
        raise DTypeError(f"`target` must be an int, got {type(target).__name__}.")
    activations, logits = capture(model, layer, images, batch_size=batch_size)
    if not 0 <= target < logits.shape[1]:
        raise RangeError(
            f"`target` must be in [0, {logits.shape[1] - 1}] (the model has "
            f"{logits.shape[1]} outputs), got {target}."
        )
    components, ratio = channel_components(activations.to(dtype), n_components)
    channels, n = components.shape[0], components.shape[1]
    response = logits[:, target].to(dtype).expand(channels, n)
    result = ace(components, response, dtype=dtype, **ace_options)
    theta = result.y_transform - result.y_transform.mean(dim=1, keepdim=True)
    phi1 = result.x_transforms[..., 0] - result.x_transforms[..., 0].mean(dim=1, keepdim=True)
    norm = (phi1.norm(dim=1) * theta.norm(dim=1)).clamp(min=torch.finfo(dtype).tiny)
    first = (phi1 * theta).sum(dim=1) / norm
    chosen = result.correlation if score == "max_corr" else first
    ranking = torch.sort(chosen, descending=True, stable=True).indices
    return PCACEResult(
        scores=chosen,
        ranking=ranking,
        max_correlation=result.correlation,
        first_component=first,
        explained_variance_ratio=ratio,
        score=score,
        target=target,
        n_observations=n,
    )
