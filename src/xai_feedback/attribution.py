r"""One attribution API over every registered method: captum's, the CAM kind, ensembles.

``attribute(model, images, target, method=..., ensemble=...)`` returns batched tensors on the
input's device: ``(B, C, H, W)`` attributions, or ``(B, H, W)`` maps with ``reduce=``. The model
is put in eval mode for the call and every module's ``training`` flag is restored after it.

Ensembles (Smilkov et al. 2017; Hooker et al. 2019) average a method over ``n_samples`` noisy
copies ``x + eps``, ``eps ~ N(0, (noise_level * (max x - min x))^2)`` with the range taken per
image:

- ``"smoothgrad"``: :math:`\frac1n \sum_i a(x + \epsilon_i)`,
- ``"smoothgrad_sq"``: :math:`\frac1n \sum_i a(x + \epsilon_i)^2`,
- ``"vargrad"``: the variance,
  :math:`\frac1n \sum_i a(x + \epsilon_i)^2 - \big(\frac1n \sum_i a(x + \epsilon_i)\big)^2`,

computed in chunks of at most ``batch_size`` noisy images, so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Literal, cast

import torch
from torch import nn

from xai_feedback._checks import (
    check_choice,
    check_finite,
    check_floating,
    check_int,
    check_model_input,
    check_number,
    check_shape,
    check_size,
)
from xai_feedback._modes import eval_mode, frozen_parameters
from xai_feedback.errors import RangeError, ShapeError
from xai_feedback.functional.cam import resize_maps
from xai_feedback.hooks import CAMHook, Reshape
from xai_feedback.layers import resolve_layer
from xai_feedback.methods import (
    AttributionFn,
    CAMMethod,
    CaptumMethod,
    Method,
    RelevanceMethod,
    get_method,
)
from xai_feedback.relevance import AttentionCapture
from xai_feedback.targets import Target, logits_of, resolve_targets

__all__ = [
    "ENSEMBLES",
    "REDUCTIONS",
    "attribute",
    "ensemble_noise",
    "reduce_channels",
]

ENSEMBLES = ("none", "smoothgrad", "smoothgrad_sq", "vargrad")
"""Noise ensembles understood by :func:`attribute`."""

REDUCTIONS = ("none", "sum", "abs_sum", "sum_sq", "max_abs")
"""Channel reductions understood by :func:`reduce_channels`."""


def reduce_channels(attributions: torch.Tensor, reduce: str = "abs_sum") -> torch.Tensor:
    """Reduce ``(B, C, H, W)`` attributions to ``(B, H, W)`` maps over the channels.

    ``"sum"``, ``"abs_sum"`` (sum of absolute values), ``"sum_sq"`` (sum of squares),
    ``"max_abs"`` (largest absolute value) or ``"none"`` (unchanged).

    Example:
        >>> reduce_channels(torch.tensor([[[[1.0]], [[-3.0]]]]), "abs_sum")
        tensor([[[4.]]])
    """
    check_choice(reduce, "reduce", REDUCTIONS)
    check_shape(attributions, "B C H W", "attributions")
    if reduce == "none":
        return attributions
    if reduce == "sum":
        return attributions.sum(dim=1)
    if reduce == "abs_sum":
        return attributions.abs().sum(dim=1)
    if reduce == "sum_sq":
        return attributions.pow(2).sum(dim=1)
    return attributions.abs().amax(dim=1)


def ensemble_noise(
    images: torch.Tensor,
    n_samples: int,
    noise_level: float = 0.15,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gaussian noise for the ensembles, std ``noise_level * (max - min)`` of each image.

    The noise is drawn on the CPU from ``generator`` (reproducible on any device) and moved to
    the images' device.

    Returns:
        ``(B * n_samples, C, H, W)`` noise, image-major (image ``b``'s samples are rows
        ``b * n_samples ... b * n_samples + n_samples - 1``), the layout of captum's NoiseTunnel.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> ensemble_noise(torch.rand(2, 1, 8, 8), 4, generator=g).shape
        torch.Size([8, 1, 8, 8])
    """
    dims = check_shape(images, "B C H W", "images")
    check_floating(images, "images")
    check_int(n_samples, "n_samples", minimum=1)
    check_number(noise_level, "noise_level", minimum=0)
    flat = images.detach().flatten(1)
    std = noise_level * (flat.amax(dim=1) - flat.amin(dim=1))  # (B,)
    shape = (dims["B"], n_samples, dims["C"], dims["H"], dims["W"])
    eps = torch.randn(shape, generator=generator, dtype=images.dtype, device="cpu")
    eps = eps.to(images.device) * std.view(-1, 1, 1, 1, 1)
    return eps.flatten(0, 1)


def attribute(
    model: nn.Module,
    images: torch.Tensor,
    target: Target = None,
    *,
    method: str = "saliency",
    ensemble: str = "none",
    n_samples: int = 16,
    noise_level: float = 0.15,
    noise: torch.Tensor | None = None,
    batch_size: int = 256,
    reduce: str = "none",
    size: tuple[int, int] | Literal["input"] | None = "input",
    layer: nn.Module | str | None = None,
    generator: torch.Generator | None = None,
    options: Mapping[str, Any] | None = None,
    reshape: Reshape | None = None,
) -> torch.Tensor:
    r"""Attributions of ``model``'s ``target`` scores for ``images``, by any registered method.

    Args:
        model: A classifier returning ``(B, K)`` logits (wrappers are unwrapped).
        images: Inputs ``(B, C, H, W)``.
        target: Labels ``(B,)``, a callable ``logits -> labels``, or ``None`` (predicted class).
        method: A registered method (``method_names()`` of :mod:`xai_feedback.methods`),
            dispatched by its kind: the captum methods; the CAM kind, computed by
            :meth:`CAMHook.maps <xai_feedback.hooks.CAMHook.maps>` (eval mode, graph cut
            before the layer, parameters frozen for the call); the relevance kind of vision
            transformers, computed by :meth:`AttentionCapture.maps
            <xai_feedback.relevance.AttentionCapture.maps>`. These two kinds return one
            channel.
        ensemble: One of :data:`ENSEMBLES`.
        n_samples: Noisy copies per image for the ensembles.
        noise_level: Noise std relative to each image's range (Smilkov et al.: 0.1-0.2).
        noise: Explicit noise ``(B * n_samples, C, H, W)`` (image-major), instead of drawing it.
        batch_size: Most (noisy) images per call (bounds memory).
        reduce: Channel reduction to ``(B, H, W)`` (:func:`reduce_channels`), or ``"none"``.
        size: Resolution of the result: ``"input"`` (default) the images' ``(H, W)``: CAM
            and relevance maps are resized to it bilinearly; ``None``: the method's own
            resolution, the layer's grid ``(h, w)`` for the CAM kind, the patch grid for the
            relevance kind, the input's size for the captum methods; a pair ``(H, W)``:
            every kind resized there bilinearly (captum's attributions per channel). Each
            chunk (and each noisy sample of an ensemble) is resized before it is combined.
        layer: Layer of the CAM kind and ``"guided_grad_cam"`` (default: the feature map
            feeding the global pooling, :func:`xai_feedback.layers.resolve_layer`; for a
            vision transformer the first norm of its last block).
        generator: Random generator for the ensemble noise.
        options: The method's own options, one mapping (each method lists what it takes in
            ``get_method(name).options``; another key is an error):

            - ``"saliency"``: ``abs`` (absolute gradients, default True);
            - ``"integrated_gradients"``: ``n_steps`` (50), ``baselines`` (0),
              ``internal_batch_size``;
            - CAM kind: ``relu`` (default: the published definition, ReLU for the
              gradient methods), ``scale`` (``"cam"``, default, or ``"paper"``; see
              :mod:`xai_feedback.methods`);
            - relevance kind: ``prefix_tokens``, ``grid``, ``query`` (see
              :class:`~xai_feedback.relevance.AttentionCapture`).
        reshape: CAM kind: how the layer's tokens fold to ``(B, C, h, w)``
            (:class:`~xai_feedback.tokens.TokenReshape`); ``None``: read from the model's
            structure.

    Returns:
        ``(B, C, H, W)`` attributions (``(B, 1, H, W)`` for the CAM and relevance kinds), or
        ``(B, H, W)`` maps when ``reduce`` is not ``"none"``, at ``size``; detached, on the
        images' device and dtype.

    Raises:
        RangeError: Unknown method, ensemble or reduction, a ``size`` string other than
            ``"input"``, or an option the method does not take (e.g. ``n_steps`` with
            ``"saliency"``).
        ShapeError: ``images`` is not ``(B, C, H, W)`` or empty, a ``target`` tensor does not
            hold one class per image, or ``size`` is not a pair.

    Shape:
        - images: :math:`(B, C, H, W)`; output: :math:`(B, C, H', W')` or :math:`(B, H', W')`,
          :math:`(H', W')` = ``size`` (``"input"``: :math:`(H, W)`; ``None``: the method's)

    Example:
        >>> from xai_feedback.models import GAPNet
        >>> model = GAPNet(width=4)
        >>> x = torch.rand(2, 1, 28, 28)
        >>> attribute(model, x, torch.tensor([1, 2]), method="saliency", reduce="sum").shape
        torch.Size([2, 28, 28])

        A CAM-kind method at its layer's resolution (``size=None``), one map per image:

        >>> attribute(model, x, method="hires_cam", size=None, reduce="sum").shape
        torch.Size([2, 14, 14])
    """
    spec = get_method(method)
    options = spec.check_options(options)
    check_choice(ensemble, "ensemble", ENSEMBLES)
    check_choice(reduce, "reduce", REDUCTIONS)
    dims = check_shape(images, "B C H W", "images")
    check_floating(images, "images")
    check_int(batch_size, "batch_size", minimum=1)
    if dims["B"] == 0:
        raise ShapeError(
            "`images` is an empty batch: attributions need at least one image, got B = 0."
        )
    check_model_input(model, images)
    check_finite(images, "images")
    out_size = _output_size(size, dims)
    with eval_mode(model):
        classes = _classes(model, images, target, batch_size)
        fn = _resized(_method_fn(model, spec, layer, options, reshape), out_size)
        if ensemble == "none":
            result = _chunked(fn, images, classes, batch_size)
        else:
            result = _ensemble(
                fn, images, classes, ensemble, n_samples, noise_level, noise, batch_size, generator
            )
    return reduce_channels(result, reduce)


def _classes(
    model: nn.Module, images: torch.Tensor, target: Target, batch_size: int
) -> torch.Tensor:
    """Target classes, checked against the number of classes (one image's forward)."""
    with torch.no_grad():
        if isinstance(target, torch.Tensor):  # one image tells the number of classes
            k = int(logits_of(model(images[:1])).shape[1])
            logits = images.new_zeros(images.shape[0], k)
        else:
            logits = torch.cat(
                [
                    logits_of(model(images[i : i + batch_size]))
                    for i in range(0, len(images), batch_size)
                ]
            )
    return resolve_targets(target, logits)


def _output_size(
    size: tuple[int, int] | str | None, dims: Mapping[str, int]
) -> tuple[int, int] | None:
    """``attribute``'s ``size`` as a pair, or ``None`` for the method's own resolution."""
    if isinstance(size, str):
        check_choice(size, "size", ("input",))
        return dims["H"], dims["W"]
    return None if size is None else check_size(size)


def _resized(fn: AttributionFn, size: tuple[int, int] | None) -> AttributionFn:
    """``fn`` whose results are resized bilinearly to ``size`` (unchanged where they are)."""
    if size is None:
        return fn

    def resized(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = fn(x, t)
        return out if tuple(out.shape[-2:]) == size else resize_maps(out, size)

    return resized


def _method_fn(
    model: nn.Module,
    spec: Method,
    layer: nn.Module | str | None,
    options: Mapping[str, Any],
    reshape: Reshape | None = None,
) -> AttributionFn:
    """``fn(images, classes) -> (b, C, h, w)`` detached attributions of one chunk.

    At the method's own resolution: the input's for captum, the layer's grid for the CAM kind
    (one channel), the patch grid for the relevance kind (one channel).
    """
    if isinstance(spec, CaptumMethod):
        module = resolve_layer(model, layer).module if spec.needs_layer else None
        captum_fn = spec.build(model, module, options)
        return lambda x, t: captum_fn(x.detach().requires_grad_(), t).detach()
    if isinstance(spec, RelevanceMethod):
        return _capture_fn(
            model,
            spec.name,
            lambda: AttentionCapture(
                model,
                prefix_tokens=options.get("prefix_tokens"),
                grid=options.get("grid"),
                query=options.get("query", "auto"),
            ),
            grad_input=spec.needs_gradients,
        )
    relu = options.get("relu")
    return _capture_fn(
        model,
        spec.name,
        lambda: _cam_capture(model, layer, reshape),
        grad_input=False,
        relu=cast(CAMMethod, spec).default_relu if relu is None else bool(relu),
        scale=str(options.get("scale", "cam")),
    )


@contextmanager
def _cam_capture(
    model: nn.Module, layer: nn.Module | str | None, reshape: Reshape | None
) -> Iterator[CAMHook]:
    """A CAM hook for explanation: eval mode, graph cut before the layer, weights frozen."""
    with (
        frozen_parameters(model),
        CAMHook(model, layer, eval_mode=True, leaf=True, reshape=reshape) as hook,
    ):
        yield hook


def _capture_fn(
    model: nn.Module,
    method: str,
    open_capture: Callable[[], AbstractContextManager[CAMHook | AttentionCapture]],
    *,
    grad_input: bool,
    **own: Any,
) -> AttributionFn:
    """``fn(images, classes) -> (b, 1, h, w)``: a capture's detached maps of one chunk.

    ``own`` holds the kind's own keywords of its ``maps`` (the CAM kind's ``relu``,
    ``scale``); ``grad_input`` makes the images require grad (what puts a frozen model's
    attention in a graph).
    """

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(grad_input)
        with open_capture() as capture:
            maps = capture.maps(model(x), t, method=method, create_graph=False, **own)
        return maps.detach().unsqueeze(1)

    return fn


def _chunked(
    fn: AttributionFn, images: torch.Tensor, classes: torch.Tensor, batch_size: int
) -> torch.Tensor:
    chunks = [
        fn(images[i : i + batch_size], classes[i : i + batch_size])
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks)


def _ensemble(
    fn: AttributionFn,
    images: torch.Tensor,
    classes: torch.Tensor,
    ensemble: str,
    n_samples: int,
    noise_level: float,
    noise: torch.Tensor | None,
    batch_size: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """SmoothGrad / SmoothGrad² / VarGrad over ``n_samples`` noisy copies per image."""
    check_int(n_samples, "n_samples", minimum=1)
    b, c, h, w = images.shape
    if noise is None:
        noise = ensemble_noise(images, n_samples, noise_level, generator=generator)
    expected = (b * n_samples, c, h, w)
    if tuple(noise.shape) != expected:
        raise ShapeError(
            f"`noise` must have shape {expected} (B * n_samples, C, H, W), "
            f"got {tuple(noise.shape)}."
        )
    noisy = images.repeat_interleave(n_samples, dim=0) + noise.to(images)
    if not bool(torch.isfinite(noisy).all()):
        raise RangeError(
            f"`noise` (or `noise_level`={noise_level}) must keep the noisy images finite, "
            f"got {int((~torch.isfinite(noisy)).sum())} NaN or infinite value(s)."
        )
    samples = _chunked(fn, noisy, classes.repeat_interleave(n_samples), batch_size)
    samples = samples.view(b, n_samples, *samples.shape[1:])
    mean = samples.mean(dim=1)
    if ensemble == "smoothgrad":
        return mean
    if ensemble == "smoothgrad_sq":
        return samples.pow(2).mean(dim=1)
    return samples.pow(2).mean(dim=1) - mean.pow(2)
