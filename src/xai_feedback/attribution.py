r"""One attribution API over captum: gradient methods, Grad-CAM and SmoothGrad ensembles.

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

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from xai_feedback._checks import check_choice, check_floating, check_int, check_number, check_shape
from xai_feedback.errors import RangeError
from xai_feedback.functional.cam import resize_maps
from xai_feedback.hooks import Target, resolve_layer, resolve_targets

__all__ = ["ENSEMBLES", "METHODS", "REDUCTIONS", "attribute", "ensemble_noise", "reduce_channels"]

METHODS = (
    "saliency",
    "input_x_gradient",
    "deconvnet",
    "guided_backprop",
    "integrated_gradients",
    "grad_cam",
    "guided_grad_cam",
)
"""Attribution methods understood by :func:`attribute`."""

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


def _captum_method(
    model: nn.Module, method: str, layer: nn.Module | None, options: dict[str, Any]
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from captum import attr

    if method == "saliency":
        sal = attr.Saliency(model)
        return lambda x, t: sal.attribute(x, target=t, abs=options.get("abs", True))
    if method == "input_x_gradient":
        ixg = attr.InputXGradient(model)
        return lambda x, t: ixg.attribute(x, target=t)
    if method == "deconvnet":
        dec = attr.Deconvolution(model)
        return lambda x, t: dec.attribute(x, target=t)
    if method == "guided_backprop":
        gbp = attr.GuidedBackprop(model)
        return lambda x, t: gbp.attribute(x, target=t)
    if method == "integrated_gradients":
        ig = attr.IntegratedGradients(model)
        steps = check_int(options.get("n_steps", 50), "n_steps", minimum=1)
        return lambda x, t: ig.attribute(
            x,
            target=t,
            baselines=options.get("baselines", 0.0),
            n_steps=steps,
            internal_batch_size=options.get("internal_batch_size"),
        )
    assert layer is not None
    if method == "grad_cam":
        gc = attr.LayerGradCam(model, layer)

        def grad_cam(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            maps = gc.attribute(x, target=t, relu_attributions=options.get("relu", True))
            size = (int(x.shape[-2]), int(x.shape[-1]))
            return resize_maps(maps.squeeze(1), size).unsqueeze(1)

        return grad_cam
    ggc = attr.GuidedGradCam(model, layer)
    return lambda x, t: ggc.attribute(x, target=t)


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
    **options: Any,
) -> torch.Tensor:
    r"""Attributions of ``model``'s ``target`` scores for ``images``, through captum.

    Args:
        model: A classifier returning ``(B, K)`` logits.
        images: Inputs ``(B, C, H, W)``.
        target: Labels ``(B,)``, a callable ``logits -> labels``, or ``None`` (predicted class).
        method: One of :data:`METHODS`. ``"grad_cam"`` is resized (bilinearly) to the input and
            returned with one channel.
        ensemble: One of :data:`ENSEMBLES`.
        n_samples: Noisy copies per image for the ensembles.
        noise_level: Noise std relative to each image's range (Smilkov et al.: 0.1-0.2).
        noise: Explicit noise ``(B * n_samples, C, H, W)`` (image-major), instead of drawing it.
        batch_size: Most noisy images per captum call (bounds memory).
        reduce: Channel reduction to ``(B, H, W)`` (:func:`reduce_channels`), or ``"none"``.
        layer: Layer for ``"grad_cam"`` / ``"guided_grad_cam"`` (default: the model's CAM layer).
        generator: Random generator for the ensemble noise.
        **options: Method options: ``abs`` (saliency, default True), ``n_steps``,
            ``baselines`` and ``internal_batch_size`` (integrated gradients), ``relu``
            (Grad-CAM, default True).

    Returns:
        ``(B, C, H, W)`` attributions (``(B, 1, H, W)`` for Grad-CAM), or ``(B, H, W)`` maps
        when ``reduce`` is not ``"none"``; detached, on the images' device and dtype.

    Shape:
        - images: :math:`(B, C, H, W)`; output: :math:`(B, C, H, W)` or :math:`(B, H, W)`

    Example:
        >>> from xai_feedback.models import GAPNet
        >>> model = GAPNet(width=4)
        >>> x = torch.rand(2, 1, 28, 28)
        >>> attribute(model, x, torch.tensor([1, 2]), method="saliency", reduce="sum").shape
        torch.Size([2, 28, 28])
    """
    check_choice(method, "method", METHODS)
    check_choice(ensemble, "ensemble", ENSEMBLES)
    check_choice(reduce, "reduce", REDUCTIONS)
    dims = check_shape(images, "B C H W", "images")
    check_floating(images, "images")
    check_int(batch_size, "batch_size", minimum=1)
    cam_layer = resolve_layer(model, layer) if method in ("grad_cam", "guided_grad_cam") else None
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(target, torch.Tensor):  # one image tells the number of classes
                k = int(model(images[:1]).shape[1])
                logits = images.new_zeros(dims["B"], k)
            else:
                logits = torch.cat(
                    [model(images[i : i + batch_size]) for i in range(0, dims["B"], batch_size)]
                )
        classes = resolve_targets(target, logits)
        captum_fn = _captum_method(model, method, cam_layer, options)

        def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return captum_fn(x.detach().requires_grad_(), t).detach()

        if ensemble == "none":
            chunks = [
                fn(images[i : i + batch_size], classes[i : i + batch_size])
                for i in range(0, dims["B"], batch_size)
            ]
            result = torch.cat(chunks)
        else:
            check_int(n_samples, "n_samples", minimum=1)
            if noise is None:
                noise = ensemble_noise(images, n_samples, noise_level, generator=generator)
            expected = (dims["B"] * n_samples, dims["C"], dims["H"], dims["W"])
            if tuple(noise.shape) != expected:
                raise RangeError(
                    f"`noise` must have shape {expected} (B * n_samples, C, H, W), "
                    f"got {tuple(noise.shape)}."
                )
            noisy = images.repeat_interleave(n_samples, dim=0) + noise.to(images)
            noisy_targets = classes.repeat_interleave(n_samples)
            chunks = [
                fn(noisy[i : i + batch_size], noisy_targets[i : i + batch_size])
                for i in range(0, len(noisy), batch_size)
            ]
            samples = torch.cat(chunks).view(dims["B"], n_samples, *chunks[0].shape[1:])
            mean = samples.mean(dim=1)
            if ensemble == "smoothgrad":
                result = mean
            elif ensemble == "smoothgrad_sq":
                result = samples.pow(2).mean(dim=1)
            else:
                result = samples.pow(2).mean(dim=1) - mean.pow(2)
    finally:
        for module, flag in flags:
            module.training = flag
    return reduce_channels(result, reduce)
