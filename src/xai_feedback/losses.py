r"""Explanation penalties (``nn.Module`` wrappers of the functional kernels) and schedules.

Which Gaussian center penalty works
-----------------------------------
The seed ("lint") penalized the ReLU'd CAM of the target class. A network can then move a
confound's evidence into *negative* evidence for the other classes, which the ReLU hides,
so :class:`CenterPenalty` defaults to the **signed CAMs of all classes** (``classes="all",
signed=True``). The benchmark ``xai-feedback bench decoy`` measures every variant.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from xai_feedback._checks import (
    check_choice,
    check_finite,
    check_int,
    check_labels,
    check_maps,
    check_masks,
    check_number,
    check_shape,
)
from xai_feedback._modes import eval_mode
from xai_feedback.errors import LayerError, MissingInputError, RangeError, ShapeError
from xai_feedback.functional.cam import NORMALIZATIONS, normalize_maps, resize_maps
from xai_feedback.functional.decomposition import (
    DECOMPOSABLE,
    cdep_penalty,
    contextual_decomposition,
)
from xai_feedback.functional.kernels import DEFAULT_SIGMA, KERNEL_SHAPES, center_weight
from xai_feedback.functional.penalties import (
    ROBUSTVIT_BACKGROUND,
    ROBUSTVIT_FOREGROUND,
    center_penalty,
    dilate_masks,
    hint_penalty,
    input_gradient_penalty,
    mask_penalty,
    projected_input_gradient_penalty,
    rademacher,
    rbr_penalty,
    receptive_field_cover,
    robustvit_classification_loss,
    robustvit_penalty,
    rrr_g_penalty,
)
from xai_feedback.layers import unwrap_model

__all__ = [
    "CLASS_SELECTIONS",
    "PENALTIES",
    "CDEPPenalty",
    "CenterPenalty",
    "ConstantSchedule",
    "HINTPenalty",
    "LossSchedule",
    "MapPenalty",
    "MaskPenalty",
    "PhaseSchedule",
    "RBRPenalty",
    "RRRGPenalty",
    "RRRPenalty",
    "RampSchedule",
    "RobustViTPenalty",
    "decomposition_chain",
    "default_object_masks",
    "get_penalty",
    "penalty_names",
    "register_penalty",
    "robustvit_classification_loss",
]


class MapPenalty(nn.Module):
    """A penalty on explanation maps; every registered penalty is called the same way.

    ``penalty(maps, target=None, masks=None)``: ``maps`` ``(B, K, h, w)`` (all classes) or
    ``(B, h, w)``; ``target`` ``(B,)`` the class indices (needed with ``classes="target"`` and
    all-class maps); ``masks`` ``(B, H, W)`` the annotations (needed by penalties that use
    them, ignored by the others). Subclasses set :attr:`name` and :attr:`classes` and are
    added to :data:`PENALTIES` by :func:`register_penalty`.
    """

    name: ClassVar[str]
    classes: str
    """``"all"``: the maps of every class are penalized; ``"target"``: the target's only."""

    def forward(
        self,
        maps: torch.Tensor,
        *,
        target: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the penalty (a scalar in the autograd graph of ``maps``)."""
        raise NotImplementedError


PENALTIES: dict[str, type[MapPenalty]] = {}
"""The registry of map penalties: name -> class (see :func:`get_penalty`)."""

_P = TypeVar("_P", bound=type[MapPenalty])


def register_penalty(cls: _P) -> _P:
    """Class decorator: add a :class:`MapPenalty` subclass to :data:`PENALTIES`.

    Raises:
        RangeError: The name is taken.
    """
    if cls.name in PENALTIES:
        raise RangeError(f"a penalty named {cls.name!r} is already registered.")
    PENALTIES[cls.name] = cls
    return cls


def penalty_names() -> tuple[str, ...]:
    """Registered penalty names, in registration order.

    Example:
        >>> penalty_names()
        ('center', 'mask', 'robustvit')
    """
    return tuple(PENALTIES)


def get_penalty(name: str, **options: Any) -> MapPenalty:
    """A new penalty of the registered class ``name``, built with ``options``.

    Raises:
        RangeError: No such penalty (the message lists the choices).

    Example:
        >>> get_penalty("center", sigma=0.5)
        CenterPenalty(sigma=0.5, classes='all', signed=True, normalize='none', shape='gaussian')
    """
    cls = PENALTIES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise RangeError(f"`penalty` must be one of {list(PENALTIES)}, got {name!r}.")
    return cls(**options)


def _prepare_maps(
    maps: torch.Tensor, target: torch.Tensor | None, classes: str, signed: bool, normalize: str
) -> torch.Tensor:
    check_maps(maps)
    check_finite(maps, "maps", sync=False)  # a NaN map would silently poison the weights
    if classes == "projected" and maps.dim() == 4:
        raise ShapeError(
            "classes='projected' weighs one map per image, the map of a random mix of the "
            f"classes (B, h, w), got all-class maps of shape {tuple(maps.shape)}."
        )
    if classes == "target" and maps.dim() == 4:
        if target is None:
            raise MissingInputError(
                "`target` is required with classes='target' and all-class maps, got None."
            )
        check_shape(target, "B", "target", B=int(maps.shape[0]))
        check_labels(target, "target", int(maps.shape[1]), sync=False)  # -1: never wrapped
        maps = maps[torch.arange(maps.shape[0], device=maps.device), target]
    if not signed:
        maps = torch.relu(maps)
    return normalize_maps(maps, normalize)


CLASS_SELECTIONS = ("all", "target", "projected")
r"""Which classes' maps a map penalty weighs: every class's (``"all"``), the label's
(``"target"``), or the all-class penalty estimated from one map (``"projected"``): the map
:math:`\tilde m_b = \sum_k v_{bk} m_{bk}` of the score :math:`\sum_k v_{bk} y_{bk}` with
random signs :math:`v_{bk} = \pm 1/\sqrt K`. For a quadratic penalty and a method linear in
the score (CAM, Grad-CAM, HiResCAM), :math:`E_v[\tilde m^2] = \frac{1}{K}\sum_k m_k^2`, so
the penalty of :math:`\tilde m` is an unbiased estimate of the all-class penalty, and its
gradient of the all-class gradient (Hutchinson's trick), at the cost of one class: one
backward instead of ``K``. The objective draws the signs
(:func:`~xai_feedback.objectives.cam_penalty_objective`)."""


class _SelectedMapsPenalty(MapPenalty):
    """A penalty on the maps after class selection (``classes``), sign and normalization."""

    def __init__(self, classes: str, signed: bool, normalize: str) -> None:
        super().__init__()
        self.classes = check_choice(classes, "classes", CLASS_SELECTIONS)
        self.signed = bool(signed)
        self.normalize = check_choice(normalize, "normalize", NORMALIZATIONS)
        if self.classes == "projected" and (not self.signed or self.normalize != "none"):
            raise RangeError(
                "classes='projected' estimates the all-class penalty from one map of a random "
                "mix of the classes, which holds for signed, unnormalized maps only: got "
                f"signed={self.signed}, normalize={self.normalize!r}."
            )

    def _prepare(self, maps: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """The maps this penalty weighs (see :func:`_prepare_maps`)."""
        return _prepare_maps(maps, target, self.classes, self.signed, self.normalize)


@register_penalty
class CenterPenalty(_SelectedMapsPenalty):
    r"""Gaussian center penalty ("lint"): evidence away from the image center costs.

    .. math:: P = \operatorname{mean}_{b,k,i,j}\big(\omega_{ij}\, \tilde m_{bkij}\big)^2,
              \qquad \omega_{ij} = 1 - e^{-(x_j^2 + y_i^2)/(2\sigma^2)}

    on coordinates in [-1, 1], where ``m~`` are the maps after class selection, sign and
    normalization. Add ``lambda * P`` to the cross-entropy.

    Args:
        sigma: Width of the Gaussian (> 0) on [-1, 1] coordinates; default
            :data:`~xai_feedback.functional.kernels.DEFAULT_SIGMA` (0.7).
        classes: ``"all"`` (penalize the maps of every class, default), ``"target"``, or
            ``"projected"`` (the all-class penalty estimated from one map:
            :data:`CLASS_SELECTIONS`).
        signed: Penalize signed evidence (default) rather than its ReLU.
        normalize: Per-map normalization before weighting (``"none"`` by default; "energy"
            normalization was measured to make training collapse).
        shape: Kernel shape, ``"gaussian"`` or ``"flat"`` (see :func:`center_weight`).
        radius: Zero region of the flat kernel.

    Shape:
        - maps: :math:`(B, K, h, w)` (all classes) or :math:`(B, h, w)`
        - target: :math:`(B,)`, needed for ``classes="target"`` with all-class maps
        - output: scalar

    Example:
        >>> penalty = CenterPenalty()  # sigma 0.7
        >>> maps = torch.zeros(2, 10, 7, 7, requires_grad=True)
        >>> float(penalty(maps))
        0.0
    """

    name = "center"

    def __init__(
        self,
        sigma: float = DEFAULT_SIGMA,
        *,
        classes: str = "all",
        signed: bool = True,
        normalize: str = "none",
        shape: str = "gaussian",
        radius: float = 0.7,
    ) -> None:
        super().__init__(classes, signed, normalize)
        self.sigma = check_number(sigma, "sigma", minimum=0, strict_minimum=True)
        self.shape = check_choice(shape, "shape", KERNEL_SHAPES)
        self.radius = check_number(radius, "radius", minimum=0, maximum=1)

    def weight(
        self, h: int, w: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """The ``(h, w)`` spatial weight for maps of that size."""
        return center_weight(
            h, w, self.sigma, shape=self.shape, radius=self.radius, device=device, dtype=dtype
        )

    def forward(
        self,
        maps: torch.Tensor,
        *,
        target: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the penalty of ``maps`` (see the class docstring); ``masks`` is unused."""
        maps = self._prepare(maps, target)
        weight = self.weight(int(maps.shape[-2]), int(maps.shape[-1]), maps.device, maps.dtype)
        return center_penalty(maps, weight)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return (
            f"sigma={self.sigma}, classes={self.classes!r}, signed={self.signed}, "
            f"normalize={self.normalize!r}, shape={self.shape!r}"
        )


@register_penalty
class MaskPenalty(_SelectedMapsPenalty):
    r"""Annotation-mask penalty: squared evidence inside user masks (RRR-G style).

    .. math:: P = \operatorname{mean}_{b,k,i,j}\big(M_{bij}\, \tilde m_{bkij}\big)^2

    with masks downsampled to the map's size by area (see
    :func:`~xai_feedback.functional.mask_penalty`; Schramowski et al. 2020).

    Args:
        classes: ``"all"`` (default), ``"target"`` or ``"projected"``
            (:data:`CLASS_SELECTIONS`).
        signed: Penalize signed evidence (default) rather than its ReLU.
        normalize: Per-map normalization before masking.

    Shape:
        - maps: :math:`(B, K, h, w)` or :math:`(B, h, w)`; masks: :math:`(B, H, W)`

    Example:
        >>> maps = torch.ones(1, 2, 2); masks = torch.zeros(1, 4, 4, dtype=torch.bool)
        >>> masks[0, :2, :2] = True
        >>> float(MaskPenalty()(maps, masks=masks))
        0.25
    """

    name = "mask"

    def __init__(
        self,
        *,
        classes: str = "all",
        signed: bool = True,
        normalize: str = "none",
        dilation: int = 0,
        field: int = 1,
    ) -> None:
        super().__init__(classes, signed, normalize)
        self.dilation = check_int(dilation, "dilation", minimum=0)
        self.field = check_int(field, "field", minimum=1)

    def forward(
        self,
        maps: torch.Tensor,
        *,
        target: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the penalty of ``maps`` inside ``masks``.

        Raises:
            MissingInputError: ``masks`` is None.
            RangeError: ``masks`` neither boolean nor in [0, 1] (checked by the kernels).
        """
        if masks is None:
            raise MissingInputError(
                "a MaskPenalty needs `masks` (B, H, W), the annotations (in a training "
                "objective: masks in the training data), got None."
            )
        maps = self._prepare(maps, target)
        if self.dilation:
            masks = dilate_masks(masks, self.dilation)
        if self.field > 1:
            masks = receptive_field_cover(masks, self.field)
        return mask_penalty(maps, masks)


@register_penalty
class RobustViTPenalty(MapPenalty):
    r"""RobustViT (Chefer et al., NeurIPS 2022): relevance off the background, onto the object.

    .. math:: P = \lambda_{bg}\, \overline{\big((1 - M) \tilde R\big)^2}
              + \lambda_{fg}\, \overline{\big(M \tilde R - M\big)^2}

    where :math:`\tilde R` is the target class's relevance map resized bilinearly to the
    masks' resolution and min-max normalized per image to [0, 1] (the reference's
    ``upscale_relevance``), :math:`M` the foreground masks (1 on the object: the opposite
    of :class:`MaskPenalty`'s masks, which mark where evidence must *not* be) and the bars
    means over images and pixels (:func:`~xai_feedback.functional.penalties.robustvit_penalty`).

    The paper's full objective adds a classification term that needs the logits:

    .. code-block:: python

        with AttentionCapture(model) as capture:
            logits = model(images)
            maps = capture.maps(logits, labels, create_graph=False)  # as the reference
        loss = 0.8 * RobustViTPenalty()(maps, masks=foreground) \
            + 0.2 * robustvit_classification_loss(logits)

    (``--lambda_seg 0.8``, ``--lambda_acc 0.2``; relevance of the ground-truth class, the
    gradients ``dy/dA`` not differentiated: ``torch.autograd.grad`` without
    ``create_graph`` in the reference). In ``cam_penalty_objective`` form (cross-entropy
    with the labels plus ``weight * P``) it is the segmentation loss alone.

    Args:
        background: :math:`\lambda_{bg}` (default 2, the paper's).
        foreground: :math:`\lambda_{fg}` (default 0.3, the paper's).
        normalize: ``"minmax"`` (the paper's) or another of
            :data:`~xai_feedback.functional.NORMALIZATIONS` (``"none"`` for maps already in
            [0, 1]).
        marks: What ``masks`` marks: ``"foreground"`` (the paper's annotations, :math:`M`)
            or ``"excluded"`` (:class:`MaskPenalty`'s convention, the region evidence must not
            come from, such as a confound: :math:`M` is its complement). With
            ``"excluded"`` the penalty takes the same ``batch.masks`` as ``"mask"`` in the
            objectives.

    Shape:
        - maps: :math:`(B, h, w)`, or :math:`(B, K, h, w)` with ``target``; masks:
          :math:`(B, H, W)`; output: scalar

    Example:
        >>> maps = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])  # all relevance top right
        >>> fg = torch.zeros(1, 2, 2); fg[0, 0, 1] = 1.0  # ... where the object is
        >>> float(RobustViTPenalty()(maps, masks=fg))
        0.0
        >>> round(float(RobustViTPenalty()(maps, masks=1 - fg)), 6)  # 2 * 1/4 + 0.3 * 3/4
        0.725
    """

    name = "robustvit"
    classes = "target"

    def __init__(
        self,
        *,
        background: float = ROBUSTVIT_BACKGROUND,
        foreground: float = ROBUSTVIT_FOREGROUND,
        normalize: str = "minmax",
        marks: str = "foreground",
    ) -> None:
        super().__init__()
        self.background = check_number(background, "background", minimum=0)
        self.foreground = check_number(foreground, "foreground", minimum=0)
        self.normalize = check_choice(normalize, "normalize", NORMALIZATIONS)
        self.marks = check_choice(marks, "marks", ("foreground", "excluded"))

    def forward(
        self,
        maps: torch.Tensor,
        *,
        target: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the penalty of the ``target`` maps against the foreground ``masks``.

        Raises:
            MissingInputError: ``masks`` is None (or ``target`` with all-class maps).
            RangeError: ``masks`` neither boolean nor in [0, 1] (NaN, negative, or a 0/255
                mask, which the message says to divide by 255).
        """
        if masks is None:
            raise MissingInputError(
                "a RobustViTPenalty needs `masks` (B, H, W), the foreground annotations, got None."
            )
        maps = _prepare_maps(maps, target, "target", True, "none")
        dims = check_shape(masks, "B H W", "masks", B=int(maps.shape[0]))
        check_masks(masks, "masks", sync=False)  # before "excluded" flips them
        size = (dims["H"], dims["W"])
        if tuple(maps.shape[-2:]) != size:
            maps = resize_maps(maps, size)
        maps = normalize_maps(maps, self.normalize)
        if self.marks == "excluded":
            masks = 1 - masks.to(maps.dtype)
        return robustvit_penalty(
            maps, masks, background=self.background, foreground=self.foreground
        )

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return (
            f"background={self.background}, foreground={self.foreground}, "
            f"normalize={self.normalize!r}, marks={self.marks!r}"
        )


class RRRPenalty(nn.Module):
    r"""Right for the Right Reasons (Ross et al. 2017): masked input-gradient penalty.

    .. math:: P = \frac{1}{B}\sum_b \Big\| M_b \odot \nabla_{x_b} \sum_k v_{bk} \log p_{bk} \Big\|^2

    ``outputs="sum"`` (default, Ross et al.): ``v = 1``, the gradient of the summed
    log-probabilities. ``outputs="all"``: ``v`` random signs drawn at every call, an unbiased
    one-backward estimate of the masked Jacobian's squared Frobenius norm
    :math:`\sum_k \|M \odot \nabla_x \log p_k\|^2` (see
    :func:`~xai_feedback.functional.penalties.projected_input_gradient_penalty` for why the
    summed log-probabilities can miss a shortcut). The images must require grad before the
    forward pass; see :func:`~xai_feedback.functional.input_gradient_penalty`.

    Args:
        outputs: ``"sum"`` or ``"all"``.
        generator: Random generator of the signs (``outputs="all"``).

    Example:
        >>> from xai_feedback.models import GAPNet
        >>> model = GAPNet(width=4)
        >>> x = torch.rand(2, 1, 28, 28, requires_grad=True)
        >>> p = RRRPenalty()(model(x), x, torch.ones(2, 28, 28))
        >>> p.requires_grad and float(p) >= 0
        True
    """

    def __init__(self, outputs: str = "sum", *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.outputs = check_choice(outputs, "outputs", ("sum", "all"))
        self.generator = generator

    def forward(
        self, logits: torch.Tensor, images: torch.Tensor, masks: torch.Tensor
    ) -> torch.Tensor:
        """Return the penalty."""
        if self.outputs == "sum":
            return input_gradient_penalty(logits, images, masks)
        check_shape(logits, "B K", "logits")
        signs = rademacher(
            tuple(logits.shape), generator=self.generator, device=logits.device, dtype=logits.dtype
        )
        return projected_input_gradient_penalty(logits, images, masks, signs)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"outputs={self.outputs!r}"


class LossSchedule:
    """Weights of the classification loss and of the penalty at each epoch.

    Subclasses implement :meth:`weights`; the training objective computes
    ``ce_weight * CE + penalty_weight * P``.
    """

    def weights(self, epoch: int, total_epochs: int) -> tuple[float, float]:
        """Return ``(ce_weight, penalty_weight)`` for zero-based ``epoch``."""
        raise NotImplementedError


@dataclass(frozen=True)
class ConstantSchedule(LossSchedule):
    """Cross-entropy weight 1 and penalty weight ``lam`` throughout.

    Example:
        >>> ConstantSchedule(2.0).weights(0, 10)
        (1.0, 2.0)
    """

    lam: float = 1.0

    def __post_init__(self) -> None:
        check_number(self.lam, "lam", minimum=0)

    def weights(self, epoch: int, total_epochs: int) -> tuple[float, float]:
        """Return ``(1, lam)``."""
        return 1.0, float(self.lam)


@dataclass(frozen=True)
class PhaseSchedule(LossSchedule):
    """The first CAM-feedback experiments' phases: each ``(epochs, ce_weight, penalty_weight)``.

    The last phase lasts for the rest of training. For example ``[(3, 1, 0), (8, 0.8, 5),
    (1, 1, 0)]``: classification only, then the penalty on, then off.

    Example:
        >>> s = PhaseSchedule([(2, 1.0, 0.0), (3, 0.8, 5.0), (1, 1.0, 0.0)])
        >>> [s.weights(e, 6)[1] for e in range(6)]
        [0.0, 0.0, 5.0, 5.0, 5.0, 0.0]
    """

    phases: Sequence[tuple[int, float, float]]

    def __post_init__(self) -> None:
        if not self.phases:
            raise RangeError("`phases` must hold at least one (epochs, ce_weight, penalty_weight).")
        for i, phase in enumerate(self.phases):
            if len(phase) != 3:
                raise RangeError(
                    f"`phases[{i}]` must be (epochs, ce_weight, penalty_weight), got {phase!r}."
                )
            check_int(phase[0], f"phases[{i}] epochs", minimum=1)
            check_number(phase[1], f"phases[{i}] ce_weight", minimum=0)
            check_number(phase[2], f"phases[{i}] penalty_weight", minimum=0)

    def weights(self, epoch: int, total_epochs: int) -> tuple[float, float]:
        """Return the weights of the phase ``epoch`` falls in."""
        end = 0
        for epochs, ce, pen in self.phases:
            end += epochs
            if epoch < end:
                return float(ce), float(pen)
        return float(self.phases[-1][1]), float(self.phases[-1][2])


@dataclass(frozen=True)
class RampSchedule(LossSchedule):
    """Penalty weight rising linearly from 0 to ``lam`` over epochs ``[start, end)``.

    Example:
        >>> s = RampSchedule(lam=4.0, start=1, end=3)
        >>> [s.weights(e, 5)[1] for e in range(5)]
        [0.0, 2.0, 4.0, 4.0, 4.0]
    """

    lam: float = 1.0
    start: int = 0
    end: int = 1

    def __post_init__(self) -> None:
        check_number(self.lam, "lam", minimum=0)
        check_int(self.start, "start", minimum=0)
        check_int(self.end, "end", minimum=self.start + 1)

    def weights(self, epoch: int, total_epochs: int) -> tuple[float, float]:
        """Return ``(1, lam * clamp((epoch - start + 1) / (end - start), 0, 1))``."""
        if epoch < self.start:
            return 1.0, 0.0
        frac = min(1.0, (epoch - self.start + 1) / (self.end - self.start))
        return 1.0, float(self.lam) * frac


# --- the XIL typology's peer methods (Friedrich et al. 2023) -------------------------------


def default_object_masks(
    images: torch.Tensor, masks: torch.Tensor | None, *, threshold: float = 0.0
) -> torch.Tensor:
    r"""HINT's object region by the published rule: pixels above ``threshold``, off the shortcut.

    .. math:: O_{bij} = \big[\max_c x_{bcij} > t\big] \wedge \big[M_{bij} = 0\big]

    The XIL typology marks the object as the pixels > 1 (of 0..255) of the image *before*
    the decoy is drawn; a training batch only holds the image with its decoy, so the
    shortcut region ``masks`` is taken out (the decoy must not count as object).

    Args:
        images: ``(B, C, H, W)`` images.
        masks: ``(B, H, W)`` shortcut masks (1 = shortcut).
        threshold: :math:`t`, on the images' scale (0: any nonzero pixel).

    Raises:
        MissingInputError: ``masks`` is None.

    Shape:
        - images: :math:`(B, C, H, W)`; masks, output: :math:`(B, H, W)` (boolean)

    Example:
        >>> x = torch.tensor([[[[0.0, 0.5], [0.7, 0.9]]]])
        >>> default_object_masks(x, torch.tensor([[[0, 0], [0, 1]]]))
        tensor([[[False,  True],
                 [ True, False]]])
    """
    dims = check_shape(images, "B C H W", "images")
    if masks is None:
        raise MissingInputError(
            "HINT's default object region needs the shortcut `masks` (B, H, W) to leave the "
            "shortcut out (or pass your own `object_masks` rule), got None."
        )
    check_shape(masks, "B H W", "masks", B=dims["B"], H=dims["H"], W=dims["W"])
    check_masks(masks, "masks", sync=False)
    check_number(threshold, "threshold")
    return (images > threshold).any(dim=1) & ~(masks > 0)


class _TypologyPenalty(nn.Module):
    """The XIL typology's Grad-CAM terms: one hyper-parameter, the batch ``reduction``."""

    def __init__(self, reduction: str = "sum") -> None:
        super().__init__()
        self.reduction = check_choice(reduction, "reduction", ("sum", "mean"))

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"reduction={self.reduction!r}"


class RRRGPenalty(_TypologyPenalty):
    r"""RRR-G's right-reason term: the min-max normalized Grad-CAM inside the shortcut mask.

    .. math:: P = \sum_b \sum_{i,j} \big(D(M_b)_{ij}\, \tilde m_{bij}\big)^2

    See :func:`~xai_feedback.functional.rrr_g_penalty` (the published normalization and mask
    downsampling, and why the normalization of a signed map is ill-posed).

    Args:
        reduction: ``"sum"`` over the batch (the authors') or ``"mean"``.

    Shape:
        - maps: :math:`(B, h, w)`; masks: :math:`(B, H, W)`

    Example:
        >>> maps = torch.tensor([[[3.0, 1.0], [1.0, 1.0]]])
        >>> masks = torch.zeros(1, 4, 4); masks[0, :2, :2] = 1
        >>> round(float(RRRGPenalty()(maps, masks)), 5)
        1.0
    """

    def forward(self, maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Return the penalty of the signed maps ``(B, h, w)`` inside ``masks``."""
        return rrr_g_penalty(maps, masks, reduction=self.reduction)


class HINTPenalty(_TypologyPenalty):
    r"""HINT's right-reason term as the XIL typology has it: normalized Grad-CAM onto the object.

    .. math:: P = \sum_b \sum_{i,j} \big(U(\tilde m_b)_{ij} - O_{bij}\big)^2

    See :func:`~xai_feedback.functional.hint_penalty`.

    Args:
        reduction: ``"sum"`` over the batch (the authors') or ``"mean"``.

    Shape:
        - maps: :math:`(B, h, w)`; object_masks: :math:`(B, H, W)`

    Example:
        >>> maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
        >>> obj = torch.zeros(1, 4, 4); obj[0, :2, :2] = 1
        >>> round(float(HINTPenalty()(maps, obj)), 6)  # 4 (1 / (1 + 1e-6) - 1) ** 2
        0.0
    """

    def forward(self, maps: torch.Tensor, object_masks: torch.Tensor) -> torch.Tensor:
        """Return the squared error of the normalized maps against the object masks."""
        return hint_penalty(maps, object_masks, reduction=self.reduction)


class RBRPenalty(nn.Module):
    r"""RBR's right-reason term (Shao et al. 2021, as the XIL typology implements it).

    .. math:: P = \sum_b \sum_{c,i,j} \Big(M_{bij}\, \partial_{x_{bcij}}
              \big(\mathbf 1^\top \nabla_\theta \operatorname{CE}\big)\,
              \partial_{x_{bcij}} \sum_k \log p_{bk}\Big)^2

    See :func:`~xai_feedback.functional.rbr_penalty` (and what is ill-posed about it).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
        >>> x = torch.rand(2, 1, 2, 2, requires_grad=True)
        >>> p = RBRPenalty()(net(x), torch.tensor([0, 1]), x, torch.ones(2, 2, 2),
        ...                  list(net.parameters()))
        >>> p.requires_grad and float(p) >= 0
        True
    """

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        images: torch.Tensor,
        masks: torch.Tensor,
        parameters: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """Return the penalty; ``images`` must require grad before the forward."""
        return rbr_penalty(logits, labels, images, masks, parameters)


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.numel() == b.numel() and bool(torch.equal(a.reshape(-1), b.reshape(-1)))


def _traced_calls(
    model: nn.Module, inner: nn.Module, images: torch.Tensor
) -> tuple[list[list[Any]], Any]:
    """Every leaf module's ``[name, module, input, output]`` in call order, and the output.

    One forward without gradients in eval mode; the hooks are removed in ``finally``.
    """
    leaves = [(n, m) for n, m in inner.named_modules() if next(m.children(), None) is None]
    calls: list[list[Any]] = []

    def pre(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if len(args) != 1 or not isinstance(args[0], torch.Tensor):
                raise LayerError(
                    f"contextual decomposition needs each module to take one tensor; "
                    f"{name!r} ({type(module).__name__}) got {len(args)} inputs."
                )
            calls.append([name, module, args[0].detach().clone(), None])

        return hook

    def post(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if isinstance(output, torch.Tensor):
            calls[-1][3] = output.detach().clone()

    handles = []
    try:
        for name, module in leaves:
            handles.append(module.register_forward_pre_hook(pre(name)))
            handles.append(module.register_forward_hook(post))
        with torch.no_grad(), eval_mode(model):
            output = model(images)
    finally:
        for handle in handles:
            handle.remove()
    return calls, output


def _check_chain(
    model_name: str, calls: list[list[Any]], images: torch.Tensor, output: Any
) -> None:
    """Refuse a trace that is not a plain chain of decomposable modules (``LayerError``)."""
    if not isinstance(output, torch.Tensor):
        raise LayerError(
            f"contextual decomposition needs a model that returns a logits tensor, got "
            f"{type(output).__name__}."
        )
    if not calls:
        raise LayerError(f"{model_name} ran no module in its forward.")
    for name, module, _, out in calls:
        if not isinstance(module, DECOMPOSABLE):
            raise LayerError(
                f"contextual decomposition has no rule for module {name!r} of type "
                f"{type(module).__name__}; supported: "
                f"{', '.join(t.__name__ for t in DECOMPOSABLE)}."
            )
        if out is None:
            raise LayerError(f"module {name!r} ({type(module).__name__}) returned no tensor.")
    previous, where = images, "the input"
    for name, module, inp, out in calls:
        if not _same_values(inp, previous):
            raise LayerError(
                f"contextual decomposition needs the forward of {model_name} to be a "
                f"plain chain of modules, but between {where} and {name!r} "
                f"({type(module).__name__}) it does something that is not a module (a "
                "residual add, attention, a functional activation ...)."
            )
        previous, where = out, f"{name!r} ({type(module).__name__})"
    if not _same_values(output, previous):
        raise LayerError(
            f"contextual decomposition needs {model_name} to return its last "
            f"module's output, but after {where} its forward does something that is not a "
            "module."
        )


def decomposition_chain(
    model: nn.Module, images: torch.Tensor
) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """The layers of ``model``'s forward as a plain chain, for contextual decomposition.

    One no-grad forward of ``images`` in eval mode (every module's flag restored) records
    each leaf module's call in order, with its input and output. The forward is a plain chain
    when the first call reads the images, each next call reads the previous call's output
    (reshaped at most: ``view`` / ``flatten`` in ``forward`` are fine) and the model returns
    the last call's output; a module called twice appears twice.

    Args:
        model: The model (wrappers such as DataParallel are unwrapped).
        images: A few ``(B, C, H, W)`` inputs.

    Returns:
        ``(name, module, input shape without the batch dimension)`` per call.

    Raises:
        LayerError: A called module without a CD rule (its type is named), a module that
            takes several inputs, or an operation between modules that is not a module
            (a residual add, attention, a functional activation ...).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
        >>> [(name, shape) for name, _, shape in decomposition_chain(net, torch.rand(2, 1, 4, 4))]
        [('0', (1, 4, 4)), ('1', (2, 2, 2)), ('2', (2, 2, 2)), ('3', (8,))]
    """
    check_shape(images, "B C H W", "images")
    inner = unwrap_model(model)
    calls, output = _traced_calls(model, inner, images)
    _check_chain(type(inner).__name__, calls, images, output)
    return [(name, module, tuple(int(s) for s in inp.shape[1:])) for name, module, inp, _ in calls]


class CDEPPenalty(nn.Module):
    r"""CDEP (Rieger et al., ICML 2020): penalize the shortcut region's part of the logits.

    .. math:: P = \operatorname{mean}_{b,k}\ \sigma\big(\beta_{bk} - \gamma_{bk}\big)

    with :math:`(\beta, \gamma)` the contextual decomposition of the logits into the part
    due to the masked region and the rest
    (:func:`~xai_feedback.functional.contextual_decomposition`, the layers read in eval
    mode). The model's chain of layers is traced once per model and input shape
    (:func:`decomposition_chain`), so a model whose ``forward`` is a plain chain of
    supported modules works whether or not it is an ``nn.Sequential``. See
    :func:`~xai_feedback.functional.cdep_penalty` for what is ill-posed about the penalty.

    Shape:
        - images: :math:`(B, C, H, W)`; masks: :math:`(B, H, W)`

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
        >>> x, m = torch.rand(2, 1, 4, 4), torch.zeros(2, 4, 4)
        >>> m[:, :2, :2] = 1
        >>> p = CDEPPenalty()(net, x, m)
        >>> 0 < float(p.detach()) < 1 and p.requires_grad
        True
    """

    def __init__(self) -> None:
        super().__init__()
        self._chains: weakref.WeakKeyDictionary[
            nn.Module, tuple[tuple[int, ...], list[tuple[str, nn.Module, tuple[int, ...]]]]
        ] = weakref.WeakKeyDictionary()

    def chain(
        self, model: nn.Module, images: torch.Tensor
    ) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
        """The traced chain of ``model`` (cached per model and per-image input shape)."""
        shape = tuple(int(s) for s in images.shape[1:])
        cached = self._chains.get(model)
        if cached is None or cached[0] != shape:
            cached = (shape, decomposition_chain(model, images[:4].detach()))
            self._chains[model] = cached
        return cached[1]

    def decompose(
        self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decomposition ``(relevant, irrelevant)`` of ``model``'s logits."""
        chain = self.chain(model, images)
        return contextual_decomposition(
            [module for _, module, _ in chain],
            images,
            masks,
            shapes=[shape for _, _, shape in chain],
        )

    def forward(self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Return the penalty of the shortcut region ``masks`` in ``model``'s logits."""
        return cdep_penalty(*self.decompose(model, images, masks))
