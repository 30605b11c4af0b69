r"""Contribution maps: gradient times activation of the summed log-probabilities at a layer.

A CAM penalty at a late layer of a network whose head is *not* a global average pool (a
flatten + linear head, as in most small CNNs) is dodged by a shortcut, and an input-gradient
(RRR) penalty is not. Three measured reasons (Decoy-FMNIST, the XIL typology's benchmark:
a SimpleConvNet, the penalty at its last convolution, an 8 x 8 map):

- **Grad-CAM averages the gradient over the map.** Its channel weight
  :math:`\alpha_c = \operatorname{mean}_{ij} \partial y / \partial A_{cij}` is dominated by the
  cells the shortcut does not touch; for a flatten head the contribution of cell ``(i, j)`` is
  :math:`\sum_c A_{cij}\, \partial y / \partial A_{cij}` (HiResCAM, Draelos & Carin 2020), which
  Grad-CAM only equals for a GAP head. Measured: Grad-CAM's linearization of the decoy's effect
  on the label's logit was 3% of the true change on a vanilla model (HiResCAM's 86%), and the
  Grad-CAM mask penalty cut its own value 690-fold while the decoy's effect fell only 10-fold.
  The other way too: after training with the contribution penalty no prediction changed with
  the decoy's gray, yet Grad-CAM's masked penalty was three times vanilla's.
- **One class is not the model.** The decoy moved the other nine logits three times as much
  as the label's (L2 norms); RRR differentiates :math:`\sum_k \log p_k`, which sees every class.
  The same contribution penalty on the label's logit alone was dodged (decoy test 0.80, with
  the decoy tied to the label 0.92): the decoy's effect moved to the other logits.
- **Not the resolution.** The decoy's change of the activations sat entirely in the four
  cells its patch reaches, which the mask downsampled by area marks (weights 1, 1/4, 1/4,
  1/16); weighting cells by their receptive field's cover
  (:func:`~xai_feedback.functional.penalties.receptive_field_cover`, ``field`` here) measured
  no better.

:func:`contribution_maps` of :func:`log_probability_sum` answers the first two (one gradient
from the logits to the layer, through the head only); :func:`contribution_penalty` squares
them inside the annotation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from xai_feedback._checks import check_floating, check_int, check_shape
from xai_feedback.errors import LayerError, RangeError, ShapeError
from xai_feedback.functional.cam import hires_cam
from xai_feedback.functional.penalties import masks_to_maps, receptive_field_cover

__all__ = [
    "contribution_maps",
    "contribution_penalty",
    "log_probability_sum",
    "receptive_field",
]


def log_probability_sum(logits: torch.Tensor) -> torch.Tensor:
    r"""Each image's summed log-probabilities, RRR's explained score (Ross et al. 2017).

    .. math:: s_b = \sum_k \log p_{bk}, \qquad p_b = \operatorname{softmax}(z_b)

    Its gradient is :math:`\sum_k (1 - K p_{bk}) \nabla z_{bk}`: every class's logit, so a
    shortcut that moves any class moves it.

    Args:
        logits: ``(B, K)`` logits.

    Shape:
        - logits: :math:`(B, K)`; output: :math:`(B,)`

    Example:
        >>> log_probability_sum(torch.zeros(1, 4))  # four classes at 1/4
        tensor([-5.5452])
    """
    check_shape(logits, "B K", "logits")
    check_floating(logits, "logits")
    return F.log_softmax(logits, dim=1).sum(dim=1)


def contribution_maps(
    scores: torch.Tensor, acts: torch.Tensor, *, create_graph: bool = True
) -> torch.Tensor:
    r"""Gradient times activation of each image's score at a layer, summed over channels.

    .. math:: C_{bij} = \sum_c A_{bcij}\, \frac{\partial s_b}{\partial A_{bcij}}

    HiResCAM's map (Draelos & Carin 2020) of an arbitrary per-image score ``s``, e.g.
    :func:`log_probability_sum`. For a head that is linear in ``A`` (flatten + linear, or GAP +
    linear), :math:`\sum_{ij} C_{bij} = s_b - s_b|_{A=0}`: the cells' exact contributions. One
    gradient of :math:`\sum_b s_b`, which equals the per-image gradients when the images do not
    interact after the layer (no batch norm in training mode there).

    Args:
        scores: ``(B,)`` scores computed from ``acts``.
        acts: ``(B, C, h, w)`` activations of the layer (part of the graph of ``scores``).
        create_graph: Keep the gradient in the graph, so a penalty on the maps trains the
            model (second order through the layers after ``acts`` only).

    Returns:
        ``(B, h, w)`` signed maps.

    Raises:
        ShapeError: ``scores`` is not ``(B,)`` or ``acts`` not ``(B, C, h, w)``.
        RangeError: ``scores`` does not depend on ``acts``.

    Shape:
        - scores: :math:`(B,)`; acts: :math:`(B, C, h, w)`; output: :math:`(B, h, w)`

    Example:
        >>> acts = torch.tensor([[[[1.0, 2.0]], [[3.0, -1.0]]]], requires_grad=True)
        >>> w = torch.tensor([[[[1.0, 0.5]], [[2.0, 4.0]]]])  # a linear head
        >>> contribution_maps((w * acts).sum((1, 2, 3)), acts)  # [1 + 6, 1 - 4]
        tensor([[[ 7., -3.]]], grad_fn=<SumBackward1>)
    """
    dims = check_shape(acts, "B C h w", "acts")
    check_shape(scores, "B", "scores", B=dims["B"])
    check_floating(acts, "acts")
    if not scores.requires_grad or not acts.requires_grad:
        raise RangeError(
            "`scores` must be computed from `acts` inside the autograd graph, got "
            f"scores.requires_grad={scores.requires_grad}, acts.requires_grad={acts.requires_grad}."
        )
    (grads,) = torch.autograd.grad(scores.sum(), acts, create_graph=create_graph, allow_unused=True)
    if grads is None:
        raise RangeError("`scores` does not depend on `acts`: pass the layer's activations.")
    return hires_cam(acts, grads, relu=False)


def contribution_penalty(maps: torch.Tensor, masks: torch.Tensor, field: int = 1) -> torch.Tensor:
    r"""Squared contributions inside the annotation, weighted by receptive-field cover.

    .. math:: P = \frac{1}{B} \sum_b \sum_{ij} \big(R_{bij}\, C_{bij}\big)^2

    with :math:`R` the share of each cell's ``field x field`` receptive field that is masked
    (:func:`~xai_feedback.functional.penalties.receptive_field_cover`, then downsampled to the
    map by area, :func:`~xai_feedback.functional.penalties.masks_to_maps`). Summed over cells
    and averaged over images, as RRR's input-gradient penalty is over pixels (Ross et al. 2017).

    Args:
        maps: ``(B, h, w)`` contribution maps (:func:`contribution_maps`).
        masks: ``(B, H, W)`` annotations, 1 / ``True`` where the model must not look.
        field: Receptive field side of a map cell in input pixels (:func:`receptive_field`);
            1: the mask downsampled by area only.

    Shape:
        - maps: :math:`(B, h, w)`; masks: :math:`(B, H, W)`; output: scalar

    Example:
        >>> maps = torch.tensor([[[2.0, 1.0], [1.0, 1.0]]])
        >>> masks = torch.zeros(1, 4, 4); masks[0, :2, :2] = 1.0  # cell (0, 0) exactly
        >>> contribution_penalty(maps, masks)  # (1 * 2) ** 2
        tensor(4.)
    """
    dims = check_shape(maps, "B h w", "maps")
    mdims = check_shape(masks, "B H W", "masks", B=dims["B"])
    check_floating(maps, "maps")
    check_int(field, "field", minimum=1)
    if dims["h"] * dims["w"] == 0 or mdims["H"] * mdims["W"] == 0:
        raise ShapeError(
            f"`maps` and `masks` must have at least one cell, got maps {tuple(maps.shape)} "
            f"and masks {tuple(masks.shape)}."
        )
    cover = receptive_field_cover(masks, field) if field > 1 else masks
    weight = masks_to_maps(cover, (dims["h"], dims["w"])).to(maps.dtype)
    return (weight * maps).pow(2).sum() / dims["B"]


def receptive_field(features: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> int:
    r"""Receptive field side, in input pixels, of the center cell of a feature map.

    The bounding box of the input pixels on which the center cell of ``features(images)``
    depends (non-zero gradient of its channel sum), united over the images; the larger of
    its height and width. Several random images find the pixels that max-pooling or a ReLU
    hides in any one image. Run the features in eval mode: batch statistics make every pixel
    of the batch count.

    Args:
        features: Images ``(B, C, H, W)`` to activations ``(B, C', h, w)``.
        images: Probe images (e.g. random, or a training batch).

    Returns:
        The side ``f`` (1 to ``max(H, W)``).

    Raises:
        LayerError: ``features`` does not return ``(B, C', h, w)`` or does not depend on the
            images.

    Example:
        >>> conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 5), torch.nn.MaxPool2d(2))
        >>> images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        >>> receptive_field(conv, images)  # 5 + (2 - 1)
        6
    """
    dims = check_shape(images, "B C H W", "images")
    check_floating(images, "images")
    with torch.enable_grad():
        probe = images.detach().clone().requires_grad_(True)
        acts = features(probe)
        if not isinstance(acts, torch.Tensor) or acts.dim() != 4 or acts.shape[0] != dims["B"]:
            got = tuple(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__
            raise LayerError(f"`features` must return (B, C, h, w) activations, got {got}.")
        h, w = int(acts.shape[2]), int(acts.shape[3])
        center = acts[:, :, h // 2, w // 2].sum()
        if not center.requires_grad:
            raise LayerError("`features` does not depend on the images (no gradient).")
        (grad,) = torch.autograd.grad(center, probe, allow_unused=True)
    if grad is None:
        raise LayerError("`features` does not depend on the images (no gradient).")
    support = grad.detach().abs().sum(dim=(0, 1)) > 0
    rows = torch.nonzero(support.any(dim=1)).flatten()
    cols = torch.nonzero(support.any(dim=0)).flatten()
    if rows.numel() == 0:
        raise LayerError("the center cell's gradient is zero on every probe image.")
    return max(int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1)
