r"""Explanation penalties as pure functions of maps, masks and gradients."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from xai_feedback._checks import check_floating, check_int, check_maps, check_masks, check_shape
from xai_feedback.errors import MissingInputError, RangeError, ShapeError

__all__ = [
    "ROBUSTVIT_BACKGROUND",
    "ROBUSTVIT_FOREGROUND",
    "TYPOLOGY_EPS",
    "center_penalty",
    "dilate_masks",
    "hint_penalty",
    "input_gradient_penalty",
    "mask_penalty",
    "masks_to_maps",
    "minmax_normalize",
    "prediction_difference_penalty",
    "projected_input_gradient_penalty",
    "rademacher",
    "rbr_penalty",
    "receptive_field_cover",
    "relevance_background_loss",
    "relevance_foreground_loss",
    "robustvit_classification_loss",
    "robustvit_penalty",
    "rrr_g_penalty",
]

ROBUSTVIT_BACKGROUND = 2.0
"""RobustViT's background-loss weight (``--lambda_background``, Chefer et al. 2022)."""
ROBUSTVIT_FOREGROUND = 0.3
"""RobustViT's foreground-loss weight (``--lambda_foreground``, Chefer et al. 2022)."""


def center_penalty(maps: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    r"""Weighted squared evidence: the "lint" penalty.

    .. math:: P = \frac{1}{B} \sum_{b} \frac{1}{K h w} \sum_{k, i, j}
              \big(\omega_{ij}\, m_{bkij}\big)^2

    with ``omega`` from :func:`~xai_feedback.functional.center_weight`. Per image it is the
    mean over classes and cells, so ``lambda`` does not depend on the map's resolution or on
    the number of classes. Signed maps are penalized on both signs (see
    :class:`xai_feedback.losses.CenterPenalty` for why that matters).

    Args:
        maps: Maps of one class ``(B, h, w)`` or of all classes ``(B, K, h, w)``.
        weight: Spatial weight ``(h, w)``.

    Returns:
        A scalar.

    Shape:
        - maps: :math:`(B, h, w)` or :math:`(B, K, h, w)`; weight: :math:`(h, w)`

    Example:
        >>> from xai_feedback.functional import center_weight
        >>> maps = torch.zeros(1, 3, 3); maps[0, 0, 0] = 2.0
        >>> w = center_weight(3, 3, sigma=0.5)
        >>> bool(torch.isclose(center_penalty(maps, w), (2 * w[0, 0]) ** 2 / 9))
        True
    """
    h, w = check_maps(maps)
    check_shape(weight, "h w", "weight", h=h, w=w)
    return (weight * maps).pow(2).mean()


def masks_to_maps(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Downsample boolean/float masks ``(B, H, W)`` to ``size`` by area: the covered fraction.

    Example:
        >>> masks_to_maps(torch.eye(4).bool()[None], (2, 2))
        tensor([[[0.5000, 0.0000],
                 [0.0000, 0.5000]]])
    """
    dims = check_shape(masks, "B H W", "masks")
    if dims["H"] * dims["W"] == 0:
        raise ShapeError(f"`masks` must have at least one pixel, got shape {tuple(masks.shape)}.")
    if not isinstance(size, tuple | list) or len(size) != 2:
        raise ShapeError(f"`size` must be a pair (h, w), got {size!r}.")
    check_int(size[0], "size[0]", minimum=1)
    check_int(size[1], "size[1]", minimum=1)
    m = _float_masks(masks)
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.adaptive_avg_pool2d(m.unsqueeze(1), size).squeeze(1)


def mask_penalty(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    r"""Squared evidence inside annotation masks (RRR-G style, Schramowski et al. 2020).

    .. math:: P = \frac{1}{B} \sum_b \frac{1}{K h w} \sum_{k,i,j} \big(M_{bij}\, m_{bkij}\big)^2

    where ``M`` is the mask downsampled to the map's size by area (the covered fraction).

    Args:
        maps: ``(B, h, w)`` or ``(B, K, h, w)`` maps.
        masks: ``(B, H, W)`` masks, ``True``/1 where evidence must not be.

    Shape:
        - maps: :math:`(B, h, w)` or :math:`(B, K, h, w)`; masks: :math:`(B, H, W)`

    Example:
        >>> maps = torch.ones(1, 2, 2); masks = torch.zeros(1, 4, 4, dtype=torch.bool)
        >>> masks[0, :2, :2] = True
        >>> float(mask_penalty(maps, masks))
        0.25
    """
    h, w = check_maps(maps)
    dims = check_shape(masks, "B H W", "masks", B=int(maps.shape[0]))
    if dims["H"] * dims["W"] == 0 or h * w == 0:
        raise ShapeError(
            f"`maps` and `masks` must have at least one cell, got maps {tuple(maps.shape)} "
            f"and masks {tuple(masks.shape)}."
        )
    cover = masks_to_maps(masks, (h, w)).to(maps.dtype)
    if maps.dim() == 4:
        cover = cover.unsqueeze(1)
    return (cover * maps).pow(2).mean()


def prediction_difference_penalty(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    r"""How far each image's prediction moves when its annotated region is replaced.

    The prediction difference of a region (Robnik-Šikonja & Kononenko 2008; Zintgraf et al.
    2017, "Visualizing deep neural network decisions: prediction difference analysis") is
    the change of every class's probability when the region's pixels are drawn from other
    images instead of the image's own (``reference``: the logits of the image with the
    region replaced, e.g. :func:`~xai_feedback.counterexamples.counterexamples` with
    ``fill="swap"``, their "marginal sampling"). For a region the model must not use it is
    zero; the penalty is its size as a divergence of the two predictions, averaged over
    images:

    .. math:: P = \frac{1}{B} \sum_b \mathrm{KL}(\tilde p_b \,\|\, p_b)
              = \frac{1}{B} \sum_b \sum_k \tilde p_{bk}
                \big(\log \tilde p_{bk} - \log p_{bk}\big)

    with :math:`p = \operatorname{softmax}(\text{logits})` and
    :math:`\tilde p = \operatorname{softmax}(\text{reference})`: every class, weighted by
    how probable the replaced image makes it. Unlike a gradient (RRR) or a map at a layer (a
    CAM), it is the finite effect of the region's whole content at input resolution.

    Args:
        logits: ``(B, K)`` logits of the images.
        reference: ``(B, K)`` logits of the same images with the region replaced.

    Returns:
        The scalar penalty, on ``logits``' device and dtype.

    Raises:
        ShapeError: ``logits`` and ``reference`` are not the same ``(B, K)``.

    Shape:
        - logits, reference: :math:`(B, K)`; output: scalar

    Example:
        >>> import math
        >>> logits = torch.tensor([[math.log(3.0), 0.0]])     # p = (3/4, 1/4)
        >>> reference = torch.zeros(1, 2)                       # p~ = (1/2, 1/2)
        >>> # (1/2) log((1/2) / (3/4)) + (1/2) log((1/2) / (1/4)) = (1/2) log(4/3)
        >>> round(float(prediction_difference_penalty(logits, reference)), 4)
        0.1438
    """
    dims = check_shape(logits, "B K", "logits")
    check_shape(reference, "B K", "reference", B=dims["B"], K=dims["K"])
    check_floating(logits, "logits")
    check_floating(reference, "reference")
    log_p = F.log_softmax(logits, dim=1)
    log_ref = F.log_softmax(reference.to(logits.dtype), dim=1)
    return (log_ref.exp() * (log_ref - log_p)).sum(dim=1).mean()


def input_gradient_penalty(
    logits: torch.Tensor, images: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    r"""The "right reasons" penalty of RRR (Ross et al. 2017), with double backpropagation.

    .. math:: P = \frac{1}{B} \sum_b \sum_{c,i,j}
              \Big(M_{bij} \frac{\partial}{\partial x_{bcij}} \sum_k \log p_{bk}\Big)^2

    ``images`` must require grad and ``logits`` must be computed from them. The gradient is
    taken with ``create_graph=True``, so the penalty trains the model; ``param.grad`` is not
    touched.

    Args:
        logits: ``(B, K)`` logits computed from ``images``.
        images: ``(B, C, H, W)`` inputs with ``requires_grad=True``.
        masks: ``(B, H, W)`` annotation masks (1 where the model must not look).

    Example:
        >>> import math
        >>> x = torch.zeros(1, 1, 2, 2, requires_grad=True)
        >>> logits = torch.stack([x.sum() + math.log(3.0), torch.zeros(())])[None]  # p0 = 3/4
        >>> # per pixel d(log p0 + log p1)/dx = 1 - 2 p0 = -1/2; four pixels: 4 * 1/4
        >>> round(float(input_gradient_penalty(logits, x, torch.ones(1, 2, 2)).detach()), 5)
        1.0
    """
    check_shape(logits, "B K", "logits")
    return projected_input_gradient_penalty(
        logits, images, masks, logits.new_ones(int(logits.shape[1]))
    )


def _float_masks(masks: torch.Tensor) -> torch.Tensor:
    """Masks checked (:func:`check_masks`) as floats: own dtype if floating, else the default."""
    check_masks(masks, "masks", sync=False)  # 0/255 or out-of-range masks: a silent wrong answer
    return masks.to(masks.dtype if masks.is_floating_point() else torch.get_default_dtype())


def _window_masks(masks: torch.Tensor, size: object, name: str, minimum: int) -> torch.Tensor:
    """``(B, H, W)`` masks as floats, once ``size`` (a window's ``name``) is an int >= minimum."""
    check_shape(masks, "B H W", "masks")
    if isinstance(size, bool) or not isinstance(size, int) or size < minimum:
        raise RangeError(f"`{name}` must be an int >= {minimum}, got {size!r}.")
    return _float_masks(masks)


def dilate_masks(masks: torch.Tensor, radius: int) -> torch.Tensor:
    r"""Grow boolean/float masks ``(B, H, W)`` by ``radius`` pixels (a square max filter).

    .. math:: D_{bij} = \max_{|u - i| \le r,\ |v - j| \le r} M_{buv}

    A CAM cell sees the input through its receptive field: a cell next to an annotated
    region can carry that region's evidence while covering none of it. Dilating the mask by
    about half the receptive field before :func:`masks_to_maps` marks every cell that can see
    the region. ``radius=0`` returns the masks unchanged (as float).

    Args:
        masks: ``(B, H, W)`` masks.
        radius: Dilation in pixels (>= 0).

    Returns:
        ``(B, H, W)`` float masks in [0, 1].

    Example:
        >>> m = torch.zeros(1, 5, 5, dtype=torch.bool); m[0, 2, 2] = True
        >>> int(dilate_masks(m, 1).sum()), int(dilate_masks(m, 2).sum())
        (9, 25)
    """
    m = _window_masks(masks, radius, "radius", 0)
    if radius == 0:
        return m
    return F.max_pool2d(m.unsqueeze(1), 2 * radius + 1, stride=1, padding=radius).squeeze(1)


def receptive_field_cover(masks: torch.Tensor, field: int) -> torch.Tensor:
    r"""Share of each pixel's ``field x field`` window that is masked (a box filter).

    .. math:: R_{bij} = \frac{1}{f^2} \sum_{|u - i| < f/2,\ |v - j| < f/2} M_{buv}

    (zero outside the image). A CAM cell's evidence can come from anywhere in its receptive
    field; :func:`masks_to_maps` of ``R`` weights each cell by how much of what it sees is
    annotated: 1 deep inside the region, falling off smoothly over one receptive field, so a
    penalty pushes evidence away from the region the more a cell depends on it, instead of
    only on the cells that lie on it (:func:`dilate_masks` is the hard version).

    Args:
        masks: ``(B, H, W)`` masks.
        field: Window side in pixels (>= 1; odd sides center the window exactly, even sides
            put the extra pixel after the center).

    Returns:
        ``(B, H, W)`` float shares in [0, 1].

    Example:
        >>> m = torch.zeros(1, 3, 3); m[0, 1, 1] = 1.0
        >>> receptive_field_cover(m, 3)[0, 0, 0] * 9
        tensor(1.)
    """
    m = _window_masks(masks, field, "field", 1)
    if field == 1:
        return m
    before, after = (field - 1) // 2, field // 2
    padded = F.pad(m.unsqueeze(1), (before, after, before, after))
    return F.avg_pool2d(padded, field, stride=1).squeeze(1)


def _check_gradient_inputs(
    logits: torch.Tensor, images: torch.Tensor, masks: torch.Tensor
) -> dict[str, int]:
    """Shapes and dtypes of an input-gradient penalty's inputs, and ``images``' grad; dims."""
    dims = check_shape(images, "B C H W", "images")
    check_shape(logits, "B K", "logits", B=dims["B"])
    check_shape(masks, "B H W", "masks", B=dims["B"], H=dims["H"], W=dims["W"])
    check_floating(images, "images")
    check_floating(logits, "logits")
    if not images.requires_grad or not logits.requires_grad:
        raise RangeError(
            "`images` must require grad and `logits` must be computed from them (call "
            "images.requires_grad_() before the forward), got "
            f"images.requires_grad={images.requires_grad}, "
            f"logits.requires_grad={logits.requires_grad}."
        )
    return dims


def projected_input_gradient_penalty(
    logits: torch.Tensor,
    images: torch.Tensor,
    masks: torch.Tensor,
    directions: torch.Tensor,
) -> torch.Tensor:
    r"""Masked input-gradient penalty of the log-probabilities projected on ``directions``.

    .. math:: P = \frac{1}{B} \sum_b \sum_{c,i,j}
              \Big(M_{bij} \frac{\partial}{\partial x_{bcij}} \sum_k v_{bk} \log p_{bk}\Big)^2

    ``v = 1`` is Ross et al.'s penalty (:func:`input_gradient_penalty`). With Rademacher
    ``v`` (independent random signs), :math:`\mathbb E_v P` is the masked squared Frobenius
    norm of the whole Jacobian, :math:`\frac1B\sum_b \sum_k \|M_b \odot \nabla_x \log p_{bk}\|^2`,
    at the cost of one backward pass. That matters: the gradient of :math:`\sum_k \log p_k`
    is one direction, :math:`\sum_k (1 - K p_k) \nabla z_k`, of the Jacobian, and a network
    can route a shortcut through the others (evidence that moves *between* classes, which
    leaves :math:`\sum_k z_k` unchanged, has zero gradient at a confident prediction and at a
    tie between two classes alike).

    Args:
        logits: ``(B, K)`` logits computed from ``images``.
        images: ``(B, C, H, W)`` inputs with ``requires_grad=True``.
        masks: ``(B, H, W)`` annotation masks (1 where the model must not look).
        directions: ``(B, K)`` or ``(K,)`` projection of the log-probabilities.

    Example:
        >>> x = torch.zeros(1, 1, 1, 2, requires_grad=True)
        >>> logits = torch.stack([x.sum(), -x.sum()])[None]  # evidence moves between classes
        >>> m = torch.ones(1, 1, 2)
        >>> float(projected_input_gradient_penalty(logits, x, m, torch.ones(2)).detach())
        0.0
        >>> v = torch.tensor([1.0, -1.0])
        >>> float(projected_input_gradient_penalty(logits, x, m, v).detach())
        8.0
    """
    dims = _check_gradient_inputs(logits, images, masks)
    if directions.dim() == 1:
        check_shape(directions, "K", "directions", K=int(logits.shape[1]))
    else:
        check_shape(directions, "B K", "directions", B=dims["B"], K=int(logits.shape[1]))
    check_masks(masks, "masks", sync=False)
    projected = (F.log_softmax(logits, dim=1) * directions.to(logits.dtype)).sum()
    (grad,) = torch.autograd.grad(projected, images, create_graph=True)
    weighted = masks.to(grad.dtype).unsqueeze(1) * grad
    return weighted.pow(2).sum() / dims["B"]


def rademacher(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Independent random signs (+1 or -1 with probability 1/2 each).

    Example:
        >>> sorted(set(rademacher((100,), generator=torch.Generator().manual_seed(0)).tolist()))
        [-1.0, 1.0]
    """
    bits = torch.randint(0, 2, shape, generator=generator, device=device)
    return (2 * bits - 1).to(dtype)


def _relevance_and_masks(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Check ``(B, h, w)`` maps and ``(B, h, w)`` masks of the same size; the masks as floats."""
    check_floating(maps, "maps")
    dims = check_shape(maps, "B h w", "maps")
    check_shape(masks, "B h w", "masks", B=dims["B"], h=dims["h"], w=dims["w"])
    if dims["h"] * dims["w"] == 0:
        raise ShapeError(f"`maps` must have at least one cell, got shape {tuple(maps.shape)}.")
    return _float_masks(masks).to(maps.dtype)


def relevance_background_loss(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    r"""RobustViT's background loss: the relevance left outside the foreground.

    .. math:: L_{bg} = \frac{1}{B h w} \sum_{b,i,j} \big((1 - M_{bij})\, R_{bij}\big)^2

    (the reference's ``MSE(relevance * (1 - seg), 0)``). ``R`` are relevance maps normalized
    to [0, 1] at the masks' resolution (:class:`xai_feedback.losses.RobustViTPenalty` does
    both).

    Args:
        maps: ``(B, h, w)`` relevance.
        masks: ``(B, h, w)`` foreground masks (1 on the object).

    Example:
        >>> r = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]]); m = torch.tensor([[[1.0, 0], [0, 0]]])
        >>> float(relevance_background_loss(r, m))  # (0.5^2) / 4
        0.0625
    """
    m = _relevance_and_masks(maps, masks)
    return ((1 - m) * maps).pow(2).mean()


def relevance_foreground_loss(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    r"""RobustViT's foreground loss: the relevance missing on the foreground.

    .. math:: L_{fg} = \frac{1}{B h w} \sum_{b,i,j} \big(M_{bij} R_{bij} - M_{bij}\big)^2

    (the reference's ``MSE(relevance * seg, seg)``; for binary masks
    :math:`M (1 - R)^2` per pixel).

    Args:
        maps: ``(B, h, w)`` relevance in [0, 1].
        masks: ``(B, h, w)`` foreground masks.

    Example:
        >>> r = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]]); m = torch.tensor([[[1.0, 1], [0, 0]]])
        >>> float(relevance_foreground_loss(r, m))  # (0.5^2) / 4
        0.0625
    """
    m = _relevance_and_masks(maps, masks)
    return (m * maps - m).pow(2).mean()


def robustvit_penalty(
    maps: torch.Tensor,
    masks: torch.Tensor,
    *,
    background: float = ROBUSTVIT_BACKGROUND,
    foreground: float = ROBUSTVIT_FOREGROUND,
) -> torch.Tensor:
    r"""RobustViT's segmentation loss: weighted background and foreground losses.

    .. math:: L_{seg} = \lambda_{bg} L_{bg} + \lambda_{fg} L_{fg}

    with :func:`relevance_background_loss`, :func:`relevance_foreground_loss` and the paper's
    :math:`\lambda_{bg} = 2`, :math:`\lambda_{fg} = 0.3`.

    Reference: H. Chefer, I. Schwartz, L. Wolf, Optimizing Relevance Maps of Vision
    Transformers Improves Robustness, NeurIPS 2022 (code: hila-chefer/RobustViT,
    ``imagenet_finetune.py``).

    Args:
        maps: ``(B, h, w)`` relevance in [0, 1] at the masks' resolution.
        masks: ``(B, h, w)`` foreground masks.
        background: :math:`\lambda_{bg}` (>= 0).
        foreground: :math:`\lambda_{fg}` (>= 0).

    Shape:
        - maps, masks: :math:`(B, h, w)`; output: scalar

    Example:
        >>> r = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]]); m = torch.tensor([[[1.0, 0], [0, 0]]])
        >>> float(robustvit_penalty(r, m))  # 2 * 0.0625 + 0.3 * 0
        0.125
    """
    for value, name in ((background, "background"), (foreground, "foreground")):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise RangeError(f"`{name}` must be a number >= 0, got {value!r}.")
    return background * relevance_background_loss(
        maps, masks
    ) + foreground * relevance_foreground_loss(maps, masks)


def robustvit_classification_loss(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r"""RobustViT's classification term: cross-entropy with the model's own top-1 prediction.

    .. math:: L_{cls} = \operatorname{CE}\big(z / T,\ \arg\max_k z_k\big)

    The reference (``imagenet_finetune.py``) takes the target from the logits being trained
    (``output.topk(1)``), not from the labels nor from the frozen original model, so the term
    keeps the fine-tuned model confident in its current prediction while the relevance loss
    moves its evidence; the paper's objective is
    :math:`0.8\, L_{seg} + 0.2\, L_{cls}`. It needs logits, not maps, so it is a function
    to add to the objective next to the :class:`~xai_feedback.losses.RobustViTPenalty`,
    not a map penalty.

    Args:
        logits: ``(B, K)`` logits.
        temperature: :math:`T > 0` (the reference's ``--temperature``, default 1).

    Example:
        >>> z = torch.tensor([[2.0, 0.0]])
        >>> round(float(robustvit_classification_loss(z)), 4)  # -log softmax(z)_0
        0.1269
    """
    check_shape(logits, "B K", "logits")
    check_floating(logits, "logits")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not temperature > 0
        or temperature == float("inf")
    ):
        raise RangeError(f"`temperature` must be a finite number > 0, got {temperature!r}.")
    pred = logits.detach().argmax(dim=1)
    return F.cross_entropy(logits / temperature, pred)


# --- the XIL typology's peer methods (Friedrich et al. 2023): RRR-G, HINT, RBR --------------

TYPOLOGY_EPS = 1e-6
"""The constant added to the range by the typology's min-max normalization
(``util.norm_saliencies_fast``)."""


def minmax_normalize(maps: torch.Tensor, eps: float = TYPOLOGY_EPS) -> torch.Tensor:
    r"""Per-image min-max normalization of signed maps, as the XIL typology does it.

    .. math:: \tilde m_{b} = \frac{m_b - \min m_b}{\max m_b - \min m_b + \epsilon}

    over all cells (and classes) of image ``b`` (Friedrich et al. 2023,
    ``util.norm_saliencies_fast``, :math:`\epsilon = 10^{-6}`). On a *signed* map this is
    ill-posed as an evidence measure: the most negative cell (strong evidence *against* the
    class) is mapped to 0, i.e. "unimportant"; the result does not depend on the map's scale
    (for a range well above :math:`\epsilon`); a constant map becomes all zeros, and near a
    constant map the derivative is of order :math:`1/\epsilon`.

    Args:
        maps: ``(B, h, w)`` or ``(B, K, h, w)`` maps.
        eps: Added to the range.

    Shape:
        - maps: :math:`(B, \dots)`; output: the same

    Example:
        >>> minmax_normalize(torch.tensor([[[-2.0, 0.0], [1.0, 2.0]]]), eps=0.0)
        tensor([[[0.0000, 0.5000],
                 [0.7500, 1.0000]]])
    """
    check_maps(maps)
    check_floating(maps, "maps")
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps >= 0:
        raise RangeError(f"`eps` must be a number >= 0, got {eps!r}.")
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    shifted = flat - low
    high = shifted.max(dim=1, keepdim=True).values
    return (shifted / (high + eps)).view_as(maps)


def _typology_term(
    maps: torch.Tensor,
    masks: torch.Tensor,
    masks_name: str,
    reduction: str,
    residual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``sum(residual(minmax_normalize(maps), masks) ** 2)``, over the batch or its mean.

    RRR-G's and HINT's shared frame: ``(B, h, w)`` floating maps, ``(B, H, W)`` masks (as
    floats of the maps' dtype), the per-image min-max normalization, a squared sum and the
    typology's ``reduction``.
    """
    dims = check_shape(maps, "B h w", "maps")
    check_shape(masks, "B H W", masks_name, B=dims["B"])
    check_floating(maps, "maps")
    weights = _float_masks(masks).to(maps.dtype)
    total = residual(minmax_normalize(maps), weights).pow(2).sum()
    if reduction not in ("sum", "mean"):
        raise RangeError(f"`reduction` must be one of ['sum', 'mean'], got {reduction!r}.")
    return total if reduction == "sum" else total / dims["B"]


def rrr_g_penalty(
    maps: torch.Tensor, masks: torch.Tensor, *, reduction: str = "sum"
) -> torch.Tensor:
    r"""RRR-G's right-reason term (the XIL typology's ``RRRGradCamLoss``).

    .. math:: P = \sum_b \sum_{i,j} \big(D(M_b)_{ij}\, \tilde m_{bij}\big)^2

    with :math:`\tilde m` the per-image min-max normalized map (:func:`minmax_normalize`) and
    :math:`D(M)` the mask ``(H, W)`` resized to the map's ``(h, w)`` bilinearly *without*
    anti-aliasing (torchvision 0.11's ``Resize`` on tensors, the authors' version): each cell
    reads the two pixels nearest its center, so a 4x4 corner patch of a 28x28 image becomes
    exactly one corner cell of value 1 on an 8x8 map. ``reduction="mean"`` divides by
    ``B``. Schramowski et al. 2020; Friedrich et al. 2023.

    Ill-posed, as published: the normalization maps each image's most negative cell to 0, so
    a shortcut turned into strong *negative* evidence has zero penalty; the penalty does not
    depend on the map's scale, so it cannot be lowered by making the region's evidence small,
    only by making it the image's minimum; a constant map gives zeros (no division by zero
    thanks to :math:`\epsilon`), and near one the gradient is of order :math:`1/\epsilon`.

    Args:
        maps: ``(B, h, w)`` signed Grad-CAM maps (not normalized).
        masks: ``(B, H, W)`` shortcut masks (1 = shortcut).
        reduction: ``"sum"`` (the authors' default) or ``"mean"`` (over images).

    Shape:
        - maps: :math:`(B, h, w)`; masks: :math:`(B, H, W)`; output: scalar

    Example:
        >>> maps = torch.tensor([[[3.0, 1.0], [1.0, 1.0]]])
        >>> masks = torch.zeros(1, 4, 4); masks[0, :2, :2] = 1
        >>> round(float(rrr_g_penalty(maps, masks)), 5)  # (1 * 2 / (2 + 1e-6)) ** 2
        1.0
        >>> float(rrr_g_penalty(-maps, masks))  # the same evidence, negative: no penalty
        0.0
    """

    def masked(normalized: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        down = F.interpolate(
            weights.unsqueeze(1),
            size=normalized.shape[-2:],
            mode="bilinear",
            align_corners=False,
            antialias=False,
        )
        return down.squeeze(1) * normalized

    return _typology_term(maps, masks, "masks", reduction, masked)


def hint_penalty(
    maps: torch.Tensor, object_masks: torch.Tensor, *, reduction: str = "sum"
) -> torch.Tensor:
    r"""HINT's right-reason term as the XIL typology implements it (``HINTLoss``).

    .. math:: P = \sum_b \sum_{i,j} \big(U(\tilde m_b)_{ij} - O_{bij}\big)^2

    with :math:`\tilde m` the per-image min-max normalized map (:func:`minmax_normalize`),
    :math:`U` nearest-neighbor upsampling to the image's ``(H, W)`` (captum's
    ``LayerAttribution.interpolate`` default, the authors' ``upsample=True``) and :math:`O`
    the object mask (1 = where the evidence should be). Rewarding the object is what HINT
    adds over a shortcut penalty (Selvaraju et al., ICCV 2019, "Taking a HINT"); the typology
    replaces HINT's ranking loss by this squared error. ``reduction="mean"`` divides by ``B``.

    Ill-posed like :func:`rrr_g_penalty`: the normalization is blind to the map's scale, maps
    the most negative cell to 0 (negative evidence counts as "background"), and forces every
    image's map to reach 1 somewhere, so a map can never match an empty object mask.

    Args:
        maps: ``(B, h, w)`` signed Grad-CAM maps (not normalized).
        object_masks: ``(B, H, W)`` object masks (1 = object).
        reduction: ``"sum"`` (the authors' default) or ``"mean"`` (over images).

    Shape:
        - maps: :math:`(B, h, w)`; object_masks: :math:`(B, H, W)`; output: scalar

    Example:
        >>> maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
        >>> obj = torch.zeros(1, 4, 4); obj[0, :2, :2] = 1  # the upsampled top-left cell
        >>> round(float(hint_penalty(maps, obj)), 4)
        0.0
    """

    def error(normalized: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(normalized.unsqueeze(1), size=weights.shape[-2:], mode="nearest")
        return up.squeeze(1) - weights

    return _typology_term(maps, object_masks, "object_masks", reduction, error)


def rbr_penalty(
    logits: torch.Tensor,
    labels: torch.Tensor,
    images: torch.Tensor,
    masks: torch.Tensor,
    parameters: Sequence[torch.Tensor],
) -> torch.Tensor:
    r"""RBR's right-reason term as the XIL typology implements it (``RBRLoss``).

    .. math:: s = \mathbf 1^\top \nabla_\theta \operatorname{CE}, \qquad
              P = \sum_b \sum_{c,i,j} \Big(M_{bij}\, \frac{\partial s}{\partial x_{bcij}}\,
              \frac{\partial}{\partial x_{bcij}} \sum_k \log p_{bk}\Big)^2

    with :math:`\operatorname{CE}` the batch-*mean* cross-entropy and
    :math:`\mathbf 1^\top \nabla_\theta` the sum of every entry of its gradient with respect
    to ``parameters``: the "influence function" of Shao et al. (AAAI 2021, "Right for Better
    Reasons") with the inverse Hessian replaced by the identity, as in the typology's code,
    multiplied element-wise with RRR's input gradient. Third order: training through it
    differentiates a double backward.

    Ill-posed, as published: the sum of the gradient's entries is not a norm; entries of
    both signs cancel and it changes under a reparametrization that leaves the model's
    function unchanged. For the *last* linear layer (weight and bias) it is identically 0,
    since the cross-entropy's gradient with respect to the logits sums to 0 over the classes:
    for a linear softmax classifier the whole penalty is 0 whatever the model looks at. The
    product of two gradients vanishes wherever either does, and because the cross-entropy is
    a batch mean, each image's term scales as :math:`1/B^2`, so the weight's meaning depends
    on the batch size.

    Args:
        logits: ``(B, K)`` logits computed from ``images``.
        labels: ``(B,)`` class indices.
        images: ``(B, C, H, W)`` inputs with ``requires_grad=True``.
        masks: ``(B, H, W)`` shortcut masks (1 = shortcut).
        parameters: The parameters of :math:`\theta` (those that require grad are used).

    Shape:
        - logits: :math:`(B, K)`; images: :math:`(B, C, H, W)`; masks: :math:`(B, H, W)`

    Example:
        >>> lin = torch.nn.Linear(4, 3)
        >>> x = torch.rand(2, 1, 2, 2, requires_grad=True)
        >>> p = rbr_penalty(lin(x.flatten(1)), torch.tensor([0, 2]), x, torch.ones(2, 2, 2),
        ...                 list(lin.parameters()))
        >>> abs(float(p)) < 1e-12  # a linear classifier: identically zero
        True
    """
    dims = _check_gradient_inputs(logits, images, masks)
    check_shape(labels, "B", "labels", B=dims["B"])
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise MissingInputError("`parameters` must hold at least one tensor that requires grad.")
    ce = F.cross_entropy(logits, labels)
    grads: tuple[torch.Tensor | None, ...] = torch.autograd.grad(
        ce, params, create_graph=True, allow_unused=True
    )
    used = [g.sum() for g in grads if g is not None]
    if not used:
        raise RangeError("`logits` do not depend on any of `parameters`.")
    influence = torch.stack(used).sum()
    found: tuple[torch.Tensor | None, ...] = torch.autograd.grad(
        influence, images, create_graph=True, allow_unused=True
    )
    # None: s does not depend on the input (e.g. only last-layer parameters were given)
    if_grad = found[0] if found[0] is not None else torch.zeros_like(images)
    (ig_grad,) = torch.autograd.grad(F.log_softmax(logits, dim=1).sum(), images, create_graph=True)
    weighted = _float_masks(masks).to(images.dtype).unsqueeze(1) * if_grad * ig_grad
    return weighted.pow(2).sum()
