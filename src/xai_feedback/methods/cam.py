r"""The CAM kind: maps of a layer's activations ``(B, C, h, w) -> (B, h, w)``.

:class:`CAMMethod` turns a layer's activations ``A`` (and ``dy/dA``) into maps with the
kernels of :mod:`xai_feedback.functional.cam`: ``"cam"``, ``"grad_cam"``, ``"hires_cam"``,
``"grad_cam_pp"``. They are differentiable and run batched inside a training step;
:class:`~xai_feedback.hooks.CAMHook` computes them.

Scale (``scale="cam"``, the default of :meth:`CAMHook.maps`)
---------------------------------------------------------------
The literature's gradient maps live on different scales: for a global-average-pool + linear
head, :math:`\partial y_k / \partial A_c(h,w) = W_{kc} / (hw)`, so Grad-CAM and HiResCAM
equal :math:`\mathrm{CAM}_k / (hw)`, while Grad-CAM++'s weights
:math:`W^+_{kc} / (2 + \bar A_c W^+_{kc})` tend to :math:`W^+_{kc}/2` for small activations. A
penalty weight tuned with one method is then useless with another. ``scale="cam"`` multiplies

- Grad-CAM and HiResCAM by :math:`hw`: for a GAP + linear head they then **equal** CAM
  (before the ReLU), exactly;
- Grad-CAM++ by 2: its weights tend to the positive head weights :math:`W^+` as activations
  tend to 0, i.e. to the CAM of the positive weights;

so a penalty weight transfers between methods. ``scale="paper"`` gives the published
definitions (those of captum, pytorch-grad-cam and torch-cam).

Adding a method: subclass :class:`CAMMethod`, set ``name``, write :meth:`CAMMethod.from_gradients`
(its kernel in ``functional/cam.py``) and decorate the class with
:func:`~xai_feedback.methods.register_method`.
"""

from __future__ import annotations

import weakref
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from xai_feedback.errors import LayerError
from xai_feedback.functional.cam import cam_from_head, grad_cam, grad_cam_pp, hires_cam
from xai_feedback.methods._gradients import (
    ALL_CLASSES_MAX_BYTES,
    CLASS_CHUNK,
    all_class_maps,
    score_gradients,
)
from xai_feedback.methods._registry import Method, MethodKind, register_method

__all__ = [
    "CAM",
    "SCALES",
    "CAMMethod",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "MapInputs",
]

SCALES = ("cam", "paper")
"""Map scales of the gradient CAM methods (see the module docstring)."""


@dataclass(frozen=True)
class MapInputs:
    """What a CAM-kind method reads: one forward's activations and logits, and the head.

    Built by :meth:`~xai_feedback.hooks.CAMHook.maps`; a method takes what it needs.

    Attributes:
        acts: The layer's activations ``A`` ``(B, C, h, w)``, in the logits' graph.
        logits: ``(B, K)`` logits of the same forward.
        create_graph: Keep ``dy/dA`` in the graph (to train through the maps).
        head: Returns the linear head (for ``"cam"``); called only by methods that need it.
        check: ``"cam"``: verify once that the layer feeds a GAP + linear head.
        owner: The (unwrapped) model, the key of that one-time check.
        layer_name: The layer's name, for messages.
        compiled: The model is ``torch.compile``'d (for messages).
        source: The captured output when ``acts`` is a fold of it (a transformer's tokens,
            :mod:`xai_feedback.tokens`): ``dy/dA`` is taken with respect to ``source``, the
            tensor in the logits' graph, and folded by ``fold``. ``None``: ``acts`` itself.
        fold: The fold ``source -> acts`` (selection and rearrangement only).
        max_bytes: Bound on the gradients kept by all-class maps
            (:func:`~xai_feedback.methods._gradients.all_class_maps`); ``None``: no bound.
        class_chunk: Classes per batched backward of all-class maps.
    """

    acts: torch.Tensor
    logits: torch.Tensor
    create_graph: bool = True
    head: Callable[[], nn.Linear] | None = None
    check: bool = True
    owner: nn.Module | None = None
    layer_name: str = "layer"
    compiled: bool = False
    source: torch.Tensor | None = None
    fold: Callable[[torch.Tensor], torch.Tensor] | None = None
    max_bytes: int | None = ALL_CLASSES_MAX_BYTES
    class_chunk: int = CLASS_CHUNK


class CAMMethod(Method):
    """A map over a layer's activations ``(B, C, h, w) -> (B, h, w)``, differentiable.

    Every method of the kind is called the same way, :meth:`maps`; a subclass supplies the
    kernel (:meth:`from_gradients`) and, if it does not use ``dy/dA``, its own
    :meth:`gradients` (CAM reads the head's weights instead).
    """

    kind: ClassVar[MethodKind] = "cam"
    options: ClassVar[frozenset[str]] = frozenset({"relu", "scale"})
    needs_gradients: ClassVar[bool] = True
    default_relu: ClassVar[bool] = True
    """The published definition's ReLU (the default of the explanation calls)."""

    def cam_scale(self, h: int, w: int) -> float:
        """Factor applied with ``scale="cam"`` (see the module docstring)."""
        return 1.0

    @abstractmethod
    def from_gradients(
        self, acts: torch.Tensor, grads: torch.Tensor, *, relu: bool
    ) -> torch.Tensor:
        """The kernel: maps ``(B, h, w)`` from activations and per-class gradients."""

    def gradients(self, inputs: MapInputs, target: torch.Tensor) -> torch.Tensor:
        """``d(sum_b y_{b, target_b}) / dA`` by ``torch.autograd.grad``, ``(B, C, h, w)``.

        With ``inputs.source`` (tokens), the gradient of the tokens, folded by ``inputs.fold``.

        Raises:
            HookError: The activations do not require grad, or the logits do not depend on
                them (another forward, a hook that replaced them, a compiled graph).
        """
        (grads,) = score_gradients(
            inputs.logits,
            target,
            [self._wrt(inputs)],
            create_graph=inputs.create_graph,
            what=self._what(inputs),
        )
        return self._folded(inputs, grads)

    @staticmethod
    def _wrt(inputs: MapInputs) -> torch.Tensor:
        return inputs.source if inputs.source is not None else inputs.acts

    @staticmethod
    def _what(inputs: MapInputs) -> str:
        what = f"the captured output of layer {inputs.layer_name!r}"
        if inputs.compiled:
            what += (
                " (torch.compile traced the forward and its backward together, so the hooked "
                "tensor may not be part of the logits' graph; explain `model._orig_mod` or "
                "compile with backend='eager')"
            )
        return what

    @staticmethod
    def _folded(inputs: MapInputs, grads: torch.Tensor) -> torch.Tensor:
        return inputs.fold(grads) if inputs.fold is not None else grads

    def maps(self, inputs: MapInputs, target: torch.Tensor | None, *, relu: bool) -> torch.Tensor:
        """Maps of ``target`` ``(B,)`` as ``(B, h, w)``, or of every class (``None``).

        Every class's gradients come from batched backwards of ``inputs.class_chunk``
        classes each (:func:`~xai_feedback.methods._gradients.all_class_maps`).

        Raises:
            RangeError: ``target=None`` and the gradients of all classes would exceed
                ``inputs.max_bytes``.

        Shape:
            - output: :math:`(B, h, w)`, or :math:`(B, K, h, w)` for ``target=None``
        """
        if target is not None:
            return self.from_gradients(inputs.acts, self.gradients(inputs, target), relu=relu)

        def maps_of(classes: torch.Tensor, grads: list[torch.Tensor] | None) -> torch.Tensor:
            if grads is None:
                return self.maps(inputs, classes, relu=relu)
            return self.from_gradients(inputs.acts, self._folded(inputs, grads[0]), relu=relu)

        return all_class_maps(
            inputs.logits,
            maps_of,
            [self._wrt(inputs)] if self.needs_gradients else [],
            create_graph=inputs.create_graph,
            what=self._what(inputs),
            max_bytes=inputs.max_bytes,
            class_chunk=inputs.class_chunk,
        )


_CAM_VERIFIED: weakref.WeakKeyDictionary[nn.Module, set[tuple[str, int]]] = (
    weakref.WeakKeyDictionary()
)


@register_method
class CAM(CAMMethod):
    r"""CAM (Zhou et al. 2016): head weights times activations, exact for a GAP + linear head.

    Its "gradients" are the head's weights :math:`W_{kc}` (for a GAP + linear head,
    :math:`\partial y_k / \partial A_c = W_{kc} / (hw)`), so no backward pass is needed; the
    maps of all classes are one ``einsum``. The published definition is signed
    (``default_relu=False``): the map's mean plus the bias is the logit.
    """

    name = "cam"
    citation = "B. Zhou et al., Learning Deep Features for Discriminative Localization, CVPR 2016."
    needs_gradients = False
    linear = True
    default_relu = False

    def from_gradients(
        self, acts: torch.Tensor, grads: torch.Tensor, *, relu: bool
    ) -> torch.Tensor:
        r""":math:`\sum_c W_{kc} A_c` with ``grads`` the head rows ``(B, C, 1, 1)``."""
        return hires_cam(acts, grads.expand_as(acts), relu=relu)

    def gradients(self, inputs: MapInputs, target: torch.Tensor) -> torch.Tensor:
        """The head's rows of ``target``, ``(B, C, 1, 1)`` (class weights: their mix)."""
        weight = self._weight(inputs)
        rows = target @ weight if target.is_floating_point() else weight[target]
        return rows[:, :, None, None]

    def maps(self, inputs: MapInputs, target: torch.Tensor | None, *, relu: bool) -> torch.Tensor:
        """CAMs from the head (all classes in one ``einsum``)."""
        if target is not None and target.is_floating_point():  # (B, K) class weights
            return self.from_gradients(inputs.acts, self.gradients(inputs, target), relu=relu)
        signed = cam_from_head(inputs.acts, self._weight(inputs), target)
        return torch.relu(signed) if relu else signed

    def _weight(self, inputs: MapInputs) -> torch.Tensor:
        if inputs.head is None:
            raise LayerError("method 'cam' needs the model's linear head, got none.")
        head = inputs.head()
        if head.weight.shape[1] != inputs.acts.shape[1]:
            raise LayerError(
                f"the head's weight has {head.weight.shape[1]} inputs but layer "
                f"{inputs.layer_name!r} has {inputs.acts.shape[1]} channels: method 'cam' needs "
                "the layer that feeds the head (a global-average-pool + linear head). Use "
                "method='grad_cam' or 'hires_cam', defined for any layer."
            )
        if inputs.check:
            self._verify(inputs, head)
        return head.weight

    def _verify(self, inputs: MapInputs, head: nn.Linear) -> None:
        """Once per model, layer and head: the maps' means plus the bias are the logits."""
        owner = inputs.owner if inputs.owner is not None else head
        key = (inputs.layer_name, id(head))
        done = _CAM_VERIFIED.setdefault(owner, set())
        if key in done or inputs.acts.shape[0] == 0:
            return
        with torch.no_grad():
            # mean over (h, w) of sum_c W_kc A_c = W @ mean(A): no maps needed
            got = inputs.acts.mean(dim=(-2, -1)) @ head.weight.t()
            if head.bias is not None:
                got = got + head.bias
            expected = inputs.logits
            low_precision = expected.dtype in (torch.float16, torch.bfloat16)
            rtol = 2e-2 if low_precision else 1e-3
            tol = rtol * (1.0 + expected.abs().amax())
            ok = bool(((got.to(expected.dtype) - expected).abs() <= tol).all())
        if not ok:
            raise LayerError(
                f"method 'cam' is only defined for a layer that feeds a global-average-pool + "
                f"linear head, and layer {inputs.layer_name!r} does not: its class maps' means "
                "plus the bias do not reproduce the logits. Use method='grad_cam' or "
                "'hires_cam' (defined for any layer), or pass the layer that feeds the "
                "pooling. (A head with dropout in training mode also fails this check; "
                "pass check=False there.)"
            )
        done.add(key)


class _GradientCAM(CAMMethod):
    """A gradient method: its maps are its kernel of ``(A, dy/dA)``.

    On CAM's scale its maps are multiplied by ``h * w`` (for a GAP + linear head they then
    equal CAM) unless the method says otherwise.
    """

    _kernel: ClassVar[Callable[..., torch.Tensor]]
    """``(acts, grads, *, relu) -> (B, h, w)``, of :mod:`xai_feedback.functional.cam`."""

    def cam_scale(self, h: int, w: int) -> float:
        """``h * w``: equals CAM for a GAP + linear head."""
        return float(h * w)

    def from_gradients(
        self, acts: torch.Tensor, grads: torch.Tensor, *, relu: bool
    ) -> torch.Tensor:
        """The maps of the method's kernel."""
        return type(self)._kernel(acts, grads, relu=relu)


@register_method
class GradCAM(_GradientCAM):
    """Grad-CAM (Selvaraju et al. 2017), :func:`~xai_feedback.functional.grad_cam`."""

    name = "grad_cam"
    citation = "R. R. Selvaraju et al., Grad-CAM, ICCV 2017."
    linear = True
    _kernel = staticmethod(grad_cam)


@register_method
class HiResCAM(_GradientCAM):
    """HiResCAM (Draelos & Carin 2020), :func:`~xai_feedback.functional.hires_cam`."""

    name = "hires_cam"
    citation = "R. L. Draelos, L. Carin, Use HiResCAM instead of Grad-CAM, arXiv:2011.08891."
    linear = True
    _kernel = staticmethod(hires_cam)


@register_method
class GradCAMPlusPlus(_GradientCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018), :func:`~xai_feedback.functional.grad_cam_pp`."""

    name = "grad_cam_pp"
    citation = "A. Chattopadhay et al., Grad-CAM++, WACV 2018."
    _kernel = staticmethod(grad_cam_pp)

    def cam_scale(self, h: int, w: int) -> float:
        """2: the weights tend to the positive head weights as activations tend to 0."""
        return 2.0
