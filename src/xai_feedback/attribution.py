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

from collections.abc import Mapping
from typing import Any, cast

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
)
from xai_feedback._modes import eval_mode, frozen_parameters
from xai_feedback.errors import DTypeError, RangeError, ShapeError
from xai_feedback.functional.cam import resize_maps
from xai_feedback.hooks import CAMHook, Reshape, logits_of
from xai_feedback.layers import resolve_layer
from xai_feedback.methods import (
    AttributionFn,
    CAMMethod,
    CaptumMethod,
    Method,
    RelevanceMethod,
    get_method,
)
from xai_feedback.relevance import relevance_maps
from xai_feedback.targets import Target, resolve_targets

__all__ = [
    "ENSEMBLES",
    "REDUCTIONS",
    "attribute",
    "cam_maps",
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


def cam_maps(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    method: str = "grad_cam",
    *,
    layer: nn.Module | str | None = None,
    relu: bool | None = None,
    scale: str = "cam",
    batch_size: int = 256,
    reshape: Reshape | None = None,
) -> torch.Tensor:
    """Maps ``(B, h, w)`` of a CAM-kind method at the layer's resolution, for explanation.

    Runs :class:`~xai_feedback.hooks.CAMHook` in eval mode (every ``training`` flag restored)
    with the graph cut before the layer and the parameters frozen for the call (restored in
    ``finally``), so the forward records no autograd history it does not need. The maps are
    detached; to train through maps, use :class:`~xai_feedback.hooks.CAMHook` directly.

    Args:
        model: A classifier returning ``(B, K)`` logits, or an output with ``.logits``
            (wrappers are unwrapped).
        images: ``(B, C, H, W)``.
        target: Labels ``(B,)``, a callable ``logits -> labels``, or ``None`` (predicted).
        method: A method of the ``"cam"`` kind (``method_names("cam")``).
        layer: The layer (default: the feature map feeding the global pooling; for a vision
            transformer the first norm of its last block).
        relu: Keep only positive evidence. Default: the published definition (ReLU for
            the gradient methods, signed for ``"cam"``); the training path
            (:meth:`~xai_feedback.hooks.CAMHook.cam`) is signed for every method.
        scale: ``"cam"`` or ``"paper"`` (see :mod:`xai_feedback.methods`).
        batch_size: Images per forward.
        reshape: How the layer's tokens fold to ``(B, C, h, w)``
            (:class:`~xai_feedback.tokens.TokenReshape`); ``None``: read from the model's
            structure (see :class:`~xai_feedback.hooks.CAMHook`).

    Shape:
        - images: :math:`(B, C, H, W)`; output: :math:`(B, h, w)`

    Example:
        >>> from xai_feedback.models import GAPNet
        >>> cam_maps(GAPNet(width=4), torch.rand(3, 1, 28, 28), None, "hires_cam").shape
        torch.Size([3, 14, 14])
    """
    get_method(method, "cam")
    dims = check_shape(images, "B C H W", "images")
    check_floating(images, "images")
    check_int(batch_size, "batch_size", minimum=1)
    if dims["B"] == 0:
        raise ShapeError("`images` is an empty batch: maps need at least one image, got B = 0.")
    check_model_input(model, images)
    check_finite(images, "images")
    return _cam_maps(model, images, target, method, layer, relu, scale, batch_size, reshape)


def _cam_maps(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    method: str,
    layer: nn.Module | str | None,
    relu: bool | None,
    scale: str,
    batch_size: int,
    reshape: Reshape | None = None,
) -> torch.Tensor:
    """:func:`cam_maps` on inputs already checked (``attribute`` checks them once)."""
    use_relu = cast(CAMMethod, get_method(method, "cam")).default_relu if relu is None else relu
    chunks = []
    with frozen_parameters(model):
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size]
            t = target[i : i + batch_size] if isinstance(target, torch.Tensor) else target
            with CAMHook(model, layer, eval_mode=True, leaf=True, reshape=reshape) as hook:
                logits = model(x)
                maps = hook.cam(
                    logits, t, method=method, relu=use_relu, scale=scale, create_graph=False
                )
            chunks.append(maps.detach())
    return torch.cat(chunks)


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
        method: A registered method (``method_names()`` of :mod:`xai_feedback.methods`):
            the captum methods, the CAM kind computed by the project's kernels
            (:func:`cam_maps`) and the relevance kind of vision transformers
            (:func:`~xai_feedback.relevance.relevance_maps`), these two resized bilinearly to
            the input and returned with one channel.
        ensemble: One of :data:`ENSEMBLES`.
        n_samples: Noisy copies per image for the ensembles.
        noise_level: Noise std relative to each image's range (Smilkov et al.: 0.1-0.2).
        noise: Explicit noise ``(B * n_samples, C, H, W)`` (image-major), instead of drawing it.
        batch_size: Most (noisy) images per call (bounds memory).
        reduce: Channel reduction to ``(B, H, W)`` (:func:`reduce_channels`), or ``"none"``.
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
        ``(B, C, H, W)`` attributions (``(B, 1, H, W)`` for the CAM kind), or ``(B, H, W)``
        maps when ``reduce`` is not ``"none"``; detached, on the images' device and dtype.

    Raises:
        RangeError: Unknown method, ensemble or reduction, or an option the method does not
            take (e.g. ``n_steps`` with ``"saliency"``).

    Shape:
        - images: :math:`(B, C, H, W)`; output: :math:`(B, C, H, W)` or :math:`(B, H, W)`

    Example:
        >>> from xai_feedback.models import GAPNet
        >>> model = GAPNet(width=4)
        >>> x = torch.rand(2, 1, 28, 28)
        >>> attribute(model, x, torch.tensor([1, 2]), method="saliency", reduce="sum").shape
        torch.Size([2, 28, 28])
    """
    spec = get_method(method)
    if options is not None and not isinstance(options, Mapping):
        raise DTypeError(f"`options` must be a mapping, got {type(options).__name__}.")
    options = dict(options or {})
    spec.check_options(options)
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
    with eval_mode(model):
        classes = _classes(model, images, target, batch_size)
        fn = _method_fn(model, spec, layer, options, batch_size, reshape)
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


def _method_fn(
    model: nn.Module,
    spec: Method,
    layer: nn.Module | str | None,
    options: Mapping[str, Any],
    batch_size: int,
    reshape: Reshape | None = None,
) -> AttributionFn:
    """``fn(images, classes) -> (b, C, H, W)`` detached attributions of one chunk."""
    if isinstance(spec, CaptumMethod):
        module = resolve_layer(model, layer).module if spec.needs_layer else None
        captum_fn = spec.build(model, module, options)
        return lambda x, t: captum_fn(x.detach().requires_grad_(), t).detach()
    if isinstance(spec, RelevanceMethod):

        def relevance_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            maps = relevance_maps(
                model,
                x,
                t,
                method=spec.name,
                prefix_tokens=options.get("prefix_tokens"),
                grid=options.get("grid"),
                query=options.get("query", "auto"),
                batch_size=batch_size,
            )
            return resize_maps(maps, (int(x.shape[-2]), int(x.shape[-1]))).unsqueeze(1)

        return relevance_fn
    scale = str(options.get("scale", "cam"))
    relu = options.get("relu")

    def cam_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        maps = _cam_maps(model, x, t, spec.name, layer, relu, scale, batch_size, reshape)
        return resize_maps(maps, (int(x.shape[-2]), int(x.shape[-1]))).unsqueeze(1)

    return cam_fn


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
