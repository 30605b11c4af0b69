r"""Class activation maps as pure, batched, differentiable tensor kernels.

All kernels take a layer's activations ``A`` of shape ``(B, C, h, w)`` (and, for the
gradient methods, ``dy/dA`` of the same shape) and return maps ``(B, h, w)``. Nothing is
detached: when ``grads`` come from ``torch.autograd.grad(..., create_graph=True)`` the maps
are differentiable with respect to the model's parameters, so they can be penalized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xai_feedback._checks import (
    check_choice,
    check_floating,
    check_labels,
    check_maps,
    check_shape,
    check_size,
)
from xai_feedback.errors import ShapeError

__all__ = [
    "NORMALIZATIONS",
    "cam_from_head",
    "grad_cam",
    "grad_cam_pp",
    "hires_cam",
    "normalize_maps",
    "resize_maps",
]


def _check_acts_grads(acts: torch.Tensor, grads: torch.Tensor) -> None:
    check_shape(acts, "B C h w", "acts")
    check_floating(acts, "acts")
    sizes = dict(zip(["B", "C", "h", "w"], acts.shape, strict=True))
    check_shape(grads, "B C h w", "grads", **sizes)
    check_floating(grads, "grads")


def cam_from_head(
    acts: torch.Tensor, weight: torch.Tensor, target: torch.Tensor | None = None
) -> torch.Tensor:
    r"""CAM of a global-average-pool + linear head (Zhou et al. 2016), signed.

    .. math:: \mathrm{CAM}_k(h, w) = \sum_c W_{kc} A_c(h, w)

    so the logit is ``y_k = mean_{h,w} CAM_k + b_k``: the map is exact evidence, positive and
    negative. Apply ``relu`` yourself for the usual display map.

    Args:
        acts: Activations ``A`` of the layer feeding the pooling.
        weight: The linear head's weight ``W``.
        target: ``(B,)`` class per image; ``None`` returns the maps of every class.

    Returns:
        ``(B, h, w)`` with a target, ``(B, K, h, w)`` without.

    Raises:
        DTypeError: ``target`` is not an integer tensor.
        RangeError: A class outside ``[0, K)`` (``-1`` is refused, never the last class).

    Shape:
        - acts: :math:`(B, C, h, w)`; weight: :math:`(K, C)`; target: :math:`(B,)`

    Example:
        >>> acts = torch.ones(2, 3, 4, 4)
        >>> weight = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 0.0]])
        >>> cam_from_head(acts, weight, torch.tensor([0, 1]))[:, 0, 0]
        tensor([ 6., -1.])
    """
    dims = check_shape(acts, "B C h w", "acts")
    check_floating(acts, "acts")
    wdims = check_shape(weight, "K C", "weight", C=dims["C"])
    check_floating(weight, "weight")
    if target is None:
        return torch.einsum("kc,bchw->bkhw", weight, acts)
    check_shape(target, "B", "target", B=dims["B"])
    check_labels(target, "target", wdims["K"], sync=False)  # weight[-1]: never wrapped
    return torch.einsum("bc,bchw->bhw", weight[target], acts)


def grad_cam(acts: torch.Tensor, grads: torch.Tensor, *, relu: bool = True) -> torch.Tensor:
    r"""Grad-CAM (Selvaraju et al. 2017).

    .. math:: \alpha_c = \frac{1}{hw}\sum_{h,w} \frac{\partial y}{\partial A_c(h,w)}, \qquad
              \mathrm{map} = \mathrm{ReLU}\Big(\sum_c \alpha_c A_c\Big)

    Args:
        acts: Activations ``A``.
        grads: ``dy/dA`` for the target score ``y`` of each image.
        relu: Apply the final ReLU (``False`` keeps signed evidence).

    Shape:
        - acts, grads: :math:`(B, C, h, w)`; output: :math:`(B, h, w)`

    Example:
        >>> acts = torch.arange(8.0).view(1, 2, 2, 2)
        >>> grads = torch.stack([torch.ones(2, 2), -torch.ones(2, 2)]).unsqueeze(0)
        >>> grad_cam(acts, grads, relu=False)
        tensor([[[-4., -4.],
                 [-4., -4.]]])
    """
    _check_acts_grads(acts, grads)
    alpha = grads.mean(dim=(2, 3), keepdim=True)
    maps = (alpha * acts).sum(dim=1)
    return F.relu(maps) if relu else maps


def hires_cam(acts: torch.Tensor, grads: torch.Tensor, *, relu: bool = True) -> torch.Tensor:
    r"""HiResCAM (Draelos & Carin 2020): element-wise gradient times activation.

    .. math:: \mathrm{map} = \sum_c \frac{\partial y}{\partial A_c} \odot A_c

    For a GAP + linear head it equals ``CAM / (h w)``, hence its faithfulness.

    Shape:
        - acts, grads: :math:`(B, C, h, w)`; output: :math:`(B, h, w)`

    Example:
        >>> grads = torch.tensor([[[[1.0, 2.0]], [[3.0, -9.0]]]])
        >>> hires_cam(torch.ones(1, 2, 1, 2), grads, relu=False)
        tensor([[[ 4., -7.]]])
    """
    _check_acts_grads(acts, grads)
    maps = (grads * acts).sum(dim=1)
    return F.relu(maps) if relu else maps


def grad_cam_pp(
    acts: torch.Tensor, grads: torch.Tensor, *, relu: bool = True, eps: float = 1e-7
) -> torch.Tensor:
    r"""Grad-CAM++ (Chattopadhay et al. 2018), with the exponential-score closed form.

    With ``g = dy/dA`` and the score taken as ``exp(y)``, the higher derivatives are powers
    of ``g``, giving

    .. math:: a_c(h,w) = \frac{g^2}{2 g^2 + \sum_{h',w'} A_c(h',w')\, g^3}, \qquad
              w_c = \sum_{h,w} a_c(h,w)\, \mathrm{ReLU}(g), \qquad
              \mathrm{map} = \mathrm{ReLU}\Big(\sum_c w_c A_c\Big)

    (``a`` is set to 0 where ``g = 0``), as in the authors' and pytorch-grad-cam's code. Since
    :math:`a\,\mathrm{ReLU}(g) = g / (2 + T g)` for :math:`g > 0` (with
    :math:`T = \sum A_c`) and 0 otherwise, the kernel computes
    :math:`w_c = \sum_{h,w} \mathrm{ReLU}(g) / (2 + T\,\mathrm{ReLU}(g))`: the same value in a
    third of the element-wise passes.

    Shape:
        - acts, grads: :math:`(B, C, h, w)`; output: :math:`(B, h, w)`

    Example:
        >>> grad_cam_pp(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
        tensor([[[0.6667, 0.6667],
                 [0.6667, 0.6667]]])
    """
    _check_acts_grads(acts, grads)
    positive = F.relu(grads)
    total = acts.sum(dim=(2, 3), keepdim=True)
    denom = (total * positive).add_(2.0)  # in place on a fresh tensor: autograd-safe
    denom = denom.masked_fill_(denom.abs() < eps, eps)
    weights = (positive / denom).sum(dim=(2, 3), keepdim=True)
    maps = (weights * acts).sum(dim=1)
    return F.relu(maps) if relu else maps


NORMALIZATIONS = ("none", "max", "sum", "minmax", "energy")
"""Per-map normalizations understood by :func:`normalize_maps`."""


def normalize_maps(maps: torch.Tensor, mode: str = "max", eps: float = 1e-8) -> torch.Tensor:
    r"""Normalize each map over its two spatial dimensions.

    - ``"max"``: ``m / (max |m| + eps)`` (keeps the sign),
    - ``"sum"``: ``m / (sum |m| + eps)``,
    - ``"minmax"``: ``(m - min) / (max - min + eps)`` into [0, 1],
    - ``"energy"``: ``m / sqrt(sum m^2 + eps)`` (unit L2 energy),
    - ``"none"``: unchanged.

    Each map is first divided by its largest magnitude (exactly, so the result is the same
    up to rounding): maps near the dtype's limits (``1e30`` in float32) do not overflow in
    the sums of squares (an overflowed sum would turn them into zeros).

    Args:
        maps: Maps ``(..., h, w)`` with at least one leading (batch) dimension.
        mode: One of :data:`NORMALIZATIONS`.
        eps: Guards against division by zero (constant maps map to 0, never NaN).

    Shape:
        - maps: :math:`(B, h, w)` or :math:`(B, K, h, w)`; output: the same

    Example:
        >>> normalize_maps(torch.tensor([[[1.0, -3.0]]]), "max")
        tensor([[[ 0.3333, -1.0000]]])
    """
    check_choice(mode, "mode", NORMALIZATIONS)
    check_floating(maps, "maps")
    if maps.dim() < 3:
        raise ShapeError(
            f"`maps` must have shape (B, h, w) or (B, K, h, w), got shape {tuple(maps.shape)}."
        )
    if mode == "none":
        return maps
    flat = maps.flatten(-2)
    if flat.shape[-1] == 0:  # no cells: nothing to normalize
        return maps.clone()
    peak = flat.abs().amax(dim=-1, keepdim=True)
    if mode == "max":
        return (flat / (peak + eps)).view_as(maps)
    # m / (S(m) + eps) == u / (S(u) + eps / p) with u = m / p, p the peak: u lies in [-1, 1]
    # (NaN/inf maps propagate; a zero peak gives u = 0 and a zero map)
    scale = torch.where(peak > 0, peak, torch.ones_like(peak))
    unit = flat / scale
    eps_u = eps / scale
    if mode == "sum":
        out = unit / (unit.abs().sum(dim=-1, keepdim=True) + eps_u)
    elif mode == "energy":
        out = unit / torch.sqrt(unit.pow(2).sum(dim=-1, keepdim=True) + eps_u / scale)
    else:
        low = unit.amin(dim=-1, keepdim=True)
        den = unit.amax(dim=-1, keepdim=True) - low + eps_u
        # eps / peak underflows to 0 for peaks near the dtype's limit: a constant map is then
        # 0 / 0, and maps to 0 as with eps
        out = (unit - low) / torch.where(den > 0, den, torch.ones_like(den))
    return out.view_as(maps)


def resize_maps(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize maps ``(B, h, w)`` or ``(B, K, h, w)`` to ``size`` (differentiable).

    Args:
        maps: The maps.
        size: ``(H, W)`` of the result, e.g. the input image's size.
        mode: ``"bilinear"`` (half-pixel centers), ``"nearest"`` or ``"area"``.

    Shape:
        - maps: :math:`(B, h, w)` or :math:`(B, K, h, w)`; output: the same with ``(H, W)``

    Example:
        >>> resize_maps(torch.ones(2, 7, 7), (28, 28)).shape
        torch.Size([2, 28, 28])
    """
    check_choice(mode, "mode", ("bilinear", "nearest", "area"))
    h, w = check_maps(maps)
    size = check_size(size)
    if h * w == 0:
        raise ShapeError(
            f"`maps` must have at least one cell to resize, got shape {tuple(maps.shape)}."
        )
    if maps.numel() == 0:  # an empty batch: nothing to interpolate
        return maps.new_zeros(*maps.shape[:-2], size[0], size[1])
    squeeze = maps.dim() == 3
    x = maps.unsqueeze(1) if squeeze else maps
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    out = F.interpolate(x, size=tuple(size), mode=mode, **kwargs)
    return out.squeeze(1) if squeeze else out
