r"""Proxy Attention: turn heat maps of hard examples into training images (in memory).

The loop (Mukherjee's *Proxy Attention* thesis): train some epochs; mine the examples
the model gets wrong (or with the highest loss); explain them; make *proxy images* by
replacing (or dimming) the pixels the map points at; keep training on originals plus (or
instead of) the proxies; repeat as a schedule such as ``[5, "p", 9, "p", 9, "p", 4]``.

Unlike the thesis code, fill values are computed per image, proxies never touch the disk, and the
split between training and evaluation data never changes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from xai_feedback._checks import (
    check_choice,
    check_finite,
    check_floating,
    check_int,
    check_number,
    check_shape,
)
from xai_feedback.attribution import attribute
from xai_feedback.data import ImageDataset
from xai_feedback.errors import MissingInputError, RangeError, ShapeError
from xai_feedback.functional.cam import normalize_maps, resize_maps
from xai_feedback.functional.masking import (
    FILLS,
    apply_mask,
    blend,
    fill_values,
    threshold_mask,
)
from xai_feedback.targets import resolve_targets
from xai_feedback.training import History, fit, predict

__all__ = [
    "ProxyAttention",
    "ProxyRound",
    "ProxySchedule",
    "mine_hard_examples",
    "proxy_images",
    "train_with_proxy",
]


def proxy_images(
    images: torch.Tensor,
    maps: torch.Tensor,
    *,
    threshold: float = 0.85,
    mode: str = "replace",
    fill: str = "zero",
    strength: float = 0.3,
    dataset_mean: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Proxy images: each map min-max normalized per image, resized, then used to edit.

    With :math:`\hat m` the map normalized to [0, 1] per image and resized to the image:

    - ``mode="replace"``: pixels with :math:`\hat m > \tau` take the fill value (``"zero"``,
      the image's own ``"mean"`` / ``"max"`` / ``"min"`` per channel, or ``"dataset_mean"``),
    - ``mode="blend"``: :math:`(1 - \lambda \hat m) \odot x` (``strength`` = :math:`\lambda`).

    Args:
        images: ``(B, C, H, W)`` images.
        maps: ``(B, h, w)`` maps with the images' aspect ratio (any resolution).
        threshold: :math:`\tau` in [0, 1] (the thesis' recommended 0.85).
        mode: ``"replace"`` or ``"blend"``.
        fill: Fill rule for ``"replace"`` (see :func:`~xai_feedback.functional.fill_values`).
        strength: :math:`\lambda` in [0, 1] for ``"blend"``.
        dataset_mean: Per-channel mean ``(C,)`` for ``fill="dataset_mean"``.

    Shape:
        - images: :math:`(B, C, H, W)`; maps: :math:`(B, h, w)`; output: :math:`(B, C, H, W)`

    Example:
        >>> x = torch.ones(1, 1, 4, 4)
        >>> m = torch.zeros(1, 2, 2); m[0, 0, 0] = 1.0
        >>> proxy_images(x, m, threshold=0.5)[0, 0]
        tensor([[0., 0., 1., 1.],
                [0., 0., 1., 1.],
                [1., 1., 1., 1.],
                [1., 1., 1., 1.]])
    """
    dims = check_shape(images, "B C H W", "images")
    check_floating(images, "images")
    if dims["H"] * dims["W"] == 0:
        raise ShapeError(f"`images` must have at least one pixel, got shape {tuple(images.shape)}.")
    mdims = check_shape(maps, "B h w", "maps")
    check_floating(maps, "maps")
    if mdims["B"] != dims["B"]:
        raise ShapeError(
            f"`maps` must have one map per image: images have batch size {dims['B']}, "
            f"maps have {mdims['B']}."
        )
    if mdims["h"] * dims["W"] != mdims["w"] * dims["H"]:
        raise ShapeError(
            f"`maps` of size {mdims['h']}x{mdims['w']} cannot be resized to the images' "
            f"{dims['H']}x{dims['W']} (different aspect ratio)."
        )
    check_number(threshold, "threshold", minimum=0, maximum=1)
    check_choice(mode, "mode", ("replace", "blend"))
    check_choice(fill, "fill", FILLS)
    check_number(strength, "strength", minimum=0, maximum=1)
    if dims["B"] == 0:
        return images.clone()
    check_finite(images, "images")
    check_finite(maps, "maps")  # a NaN map normalizes to NaN and silently selects nothing
    norm = normalize_maps(maps.to(images.dtype), "minmax")
    if (mdims["h"], mdims["w"]) != (dims["H"], dims["W"]):
        norm = resize_maps(norm, (dims["H"], dims["W"])).clamp(0.0, 1.0)
    if mode == "blend":
        return blend(images, norm, strength)
    return apply_mask(
        images, threshold_mask(norm, threshold), fill_values(images, fill, dataset_mean)
    )


class ProxyAttention(nn.Module):
    """:func:`proxy_images` with stored hyper-parameters.

    Example:
        >>> proxy = ProxyAttention(threshold=0.85, mode="blend", strength=0.3)
        >>> proxy(torch.rand(4, 1, 28, 28), torch.rand(4, 7, 7)).shape
        torch.Size([4, 1, 28, 28])
    """

    def __init__(
        self,
        threshold: float = 0.85,
        mode: str = "replace",
        fill: str = "zero",
        strength: float = 0.3,
        dataset_mean: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.threshold = check_number(threshold, "threshold", minimum=0, maximum=1)
        self.mode = check_choice(mode, "mode", ("replace", "blend"))
        self.fill = check_choice(fill, "fill", FILLS)
        self.strength = check_number(strength, "strength", minimum=0, maximum=1)
        self.dataset_mean = dataset_mean

    def forward(self, images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Return the proxy images of ``images`` under ``maps``."""
        return proxy_images(
            images,
            maps,
            threshold=self.threshold,
            mode=self.mode,
            fill=self.fill,
            strength=self.strength,
            dataset_mean=self.dataset_mean,
        )

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return (
            f"threshold={self.threshold}, mode={self.mode!r}, fill={self.fill!r}, "
            f"strength={self.strength}"
        )


def mine_hard_examples(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    by: str = "misclassified",
    fraction: float | None = 0.2,
    count: int | None = None,
) -> torch.Tensor:
    """Indices of hard examples, hardest (highest loss) first.

    Args:
        logits: ``(N, K)`` logits.
        target: ``(N,)`` class indices (the true classes).
        by: ``"misclassified"`` (candidates are the wrong predictions) or ``"loss"`` (all).
        fraction: Keep ``ceil(fraction * candidates)`` of them (0.2: the thesis' setting).
        count: Keep at most this many instead (overrides ``fraction``).

    Returns:
        A ``(M,)`` long tensor, possibly empty (nothing wrong: nothing to mine), in which case
        a ``RuntimeWarning`` says why.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
        >>> mine_hard_examples(logits, torch.tensor([0, 0, 1]), fraction=1.0)
        tensor([2, 1])
    """
    dims = check_shape(logits, "N K", "logits")
    check_shape(target, "N", "target", N=dims["N"])
    check_choice(by, "by", ("misclassified", "loss"))
    if count is not None:
        check_int(count, "count", minimum=0)
    elif fraction is not None:
        check_number(fraction, "fraction", minimum=0, maximum=1)
    else:
        raise MissingInputError("one of `fraction` or `count` must be given, got neither.")
    check_floating(logits, "logits")
    check_finite(logits, "logits")  # NaN logits would rank arbitrarily
    target = resolve_targets(target, logits)  # integer classes in [0, K): never wrapped
    loss = F.cross_entropy(logits.detach(), target, reduction="none")
    candidates = torch.arange(dims["N"], device=logits.device)
    if by == "misclassified":
        candidates = candidates[logits.argmax(1) != target]
    ranked = candidates[torch.argsort(loss[candidates], descending=True, stable=True)]
    keep = count if count is not None else math.ceil(float(fraction) * len(ranked))  # type: ignore[arg-type]
    mined = ranked[: min(keep, len(ranked))]
    if len(mined) == 0 and dims["N"] > 0:
        warnings.warn(
            f"mine_hard_examples mined nothing: {len(candidates)} of {dims['N']} examples are "
            f"candidates (by={by!r}) and {keep} were asked for; nothing is misclassified, or "
            "`fraction`/`count` is 0.",
            RuntimeWarning,
            stacklevel=2,
        )
    return mined


@dataclass(frozen=True)
class ProxySchedule:
    """A schedule such as ``[5, "p", 9, "p", 9, "p", 4]``: epochs, and proxy steps ``"p"``.

    Example:
        >>> ProxySchedule([5, "p", 9, "p", 4]).epochs
        18
    """

    steps: Sequence[int | str]

    def __post_init__(self) -> None:
        if not self.steps:
            raise RangeError("`steps` must not be empty.")
        for i, step in enumerate(self.steps):
            if isinstance(step, str):
                if step != "p":
                    raise RangeError(f'`steps[{i}]` must be an epoch count or "p", got {step!r}.')
            else:
                check_int(step, f"steps[{i}]", minimum=1)
        if isinstance(self.steps[-1], str):
            raise RangeError(
                'the schedule must end with epochs: proxies made by a final "p" '
                "would never be trained on."
            )

    @property
    def epochs(self) -> int:
        """Total number of training epochs."""
        return sum(s for s in self.steps if isinstance(s, int))

    def without_proxies(self) -> ProxySchedule:
        """The same epochs with no proxy step (the baseline of a fair comparison)."""
        return ProxySchedule([s for s in self.steps if isinstance(s, int)])


@dataclass
class ProxyRound:
    """What one proxy step did: how many hard examples were found and turned into proxies."""

    epoch: int
    hard_examples: int
    training_size: int


@dataclass
class ProxyHistory:
    """Training history of :func:`train_with_proxy`."""

    segments: list[History] = field(default_factory=list)
    rounds: list[ProxyRound] = field(default_factory=list)


def train_with_proxy(
    model: nn.Module,
    data: ImageDataset,
    schedule: ProxySchedule | Sequence[int | str],
    *,
    proxy: ProxyAttention | None = None,
    method: str = "grad_cam_pp",
    layer: nn.Module | str | None = None,
    by: str = "misclassified",
    fraction: float | None = 0.2,
    count: int | None = None,
    keep_originals: bool = True,
    batch_size: int = 64,
    lr: float = 3e-3,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> ProxyHistory:
    """Train ``model`` following ``schedule``, adding proxy images of hard examples at each "p".

    Each run of epochs is one :func:`~xai_feedback.training.fit` call (its own one-cycle
    schedule); ``schedule.without_proxies()`` gives the matching baseline. At a proxy step,
    the hard examples of the *original* training set are mined, explained with ``method`` for
    their predicted (wrong) class, as in the thesis (at ``layer`` for the CAM family; default: the
    feature map feeding the global pooling), and turned into proxies, which are added to
    the training data (``keep_originals=True``) or replace the originals they came from.
    Everything stays in memory, on the data's device.

    Returns:
        The per-segment histories and one :class:`ProxyRound` per proxy step.
    """
    plan = schedule if isinstance(schedule, ProxySchedule) else ProxySchedule(schedule)
    transform = proxy if proxy is not None else ProxyAttention()
    current = data
    result = ProxyHistory()
    done = 0
    for step in plan.steps:
        if isinstance(step, int):
            result.segments.append(
                fit(
                    model,
                    current,
                    epochs=step,
                    batch_size=batch_size,
                    lr=lr,
                    generator=generator,
                    progress=progress,
                )
            )
            done += step
            continue
        logits = predict(model, data.images)
        hard = mine_hard_examples(logits, data.labels, by=by, fraction=fraction, count=count)
        if len(hard):
            x = data.images[hard]
            maps = attribute(
                model, x, logits[hard].argmax(1), method=method, reduce="abs_sum", layer=layer
            )
            proxies = ImageDataset(
                transform(x, maps),
                data.labels[hard],
                None if data.masks is None else data.masks[hard],
                f"{data.name}+proxy",
            )
            if keep_originals:
                current = _concat(current, proxies)
            else:
                keep = torch.ones(len(data), dtype=torch.bool, device=data.labels.device)
                keep[hard] = False
                current = _concat(data.subset(keep), proxies)
        result.rounds.append(ProxyRound(done, len(hard), len(current)))
    return result


def _concat(a: ImageDataset, b: ImageDataset) -> ImageDataset:
    masks = None if a.masks is None or b.masks is None else torch.cat([a.masks, b.masks])
    return ImageDataset(
        torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]), masks, a.name
    )
