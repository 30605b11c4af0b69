r"""One registry of explanation methods: one name, one definition, used everywhere.

:class:`~xai_feedback.hooks.CAMHook`, :func:`~xai_feedback.attribution.attribute`,
proxy attention and the penalties' objectives all look methods up here,
so ``"grad_cam"`` means the same computation on every path.

Two families:

- **CAM methods** (:class:`CAMMethod`) turn a layer's activations ``A`` ``(B, C, h, w)`` (and
  ``dy/dA``) into maps ``(B, h, w)`` with the kernels of :mod:`xai_feedback.functional.cam`:
  ``"cam"``, ``"grad_cam"``, ``"hires_cam"``, ``"grad_cam_pp"``. They are differentiable and
  run batched inside a training step.
- **Attribution methods** (:class:`CaptumMethod`) attribute to input pixels through captum:
  ``"saliency"``, ``"input_x_gradient"``, ``"deconvnet"``, ``"guided_backprop"``,
  ``"integrated_gradients"``, ``"guided_grad_cam"``.
- **Relevance methods** (family ``"relevance"``) of vision transformers, defined in
  :mod:`xai_feedback.relevance`: ``"rollout"``, ``"chefer_relevance"``.

Scale (``scale="cam"``, the default of :meth:`CAMHook.cam`)
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

Adding a method: subclass :class:`CAMMethod` or :class:`CaptumMethod`, set ``name``, and
decorate the class with :func:`register_method`.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from xai_feedback._checks import check_int
from xai_feedback.errors import HookError, LayerError, RangeError
from xai_feedback.functional.cam import cam_from_head, grad_cam, grad_cam_pp, hires_cam

__all__ = [
    "SCALES",
    "AttributionFn",
    "CAMMethod",
    "CaptumMethod",
    "Family",
    "MapInputs",
    "Method",
    "get_method",
    "method_names",
    "register_method",
]

Family = Literal["cam", "attribution", "relevance"]
SCALES = ("cam", "paper")
"""Map scales of the gradient CAM methods (see the module docstring)."""

AttributionFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``fn(images, targets) -> attributions`` built by :meth:`CaptumMethod.build`."""


class Method(ABC):
    """An explanation method: a registered name, its family, the options it accepts."""

    name: ClassVar[str]
    family: ClassVar[Family]
    citation: ClassVar[str] = ""
    options: ClassVar[frozenset[str]] = frozenset()
    """Keyword options the method accepts (validated by :func:`check_options`)."""

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise :class:`~xai_feedback.errors.RangeError` for an option this method ignores."""
        unknown = sorted(set(options) - self.options)
        if unknown:
            allowed = sorted(self.options) or "none"
            raise RangeError(
                f"method {self.name!r} does not take option(s) {unknown}; it accepts: {allowed}."
            )


@dataclass(frozen=True)
class MapInputs:
    """What a CAM-family method reads: one forward's activations and logits, and the head.

    Built by :meth:`~xai_feedback.hooks.CAMHook.cam`; a method takes what it needs.

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


class CAMMethod(Method):
    """A map over a layer's activations ``(B, C, h, w) -> (B, h, w)``, differentiable.

    Every method of the family is called the same way, :meth:`maps`; a subclass supplies the
    kernel (:meth:`from_gradients`) and, if it does not use ``dy/dA``, its own
    :meth:`gradients` (CAM reads the head's weights instead).
    """

    family: ClassVar[Family] = "cam"
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
        acts, logits = inputs.acts, inputs.logits
        if inputs.source is not None:
            acts = inputs.source
        if not acts.requires_grad:
            raise HookError(
                f"method {self.name!r} needs gradients, but the activations do not require grad "
                "(was the forward run under torch.no_grad()?)."
            )
        score = logits.gather(1, target[:, None]).sum()
        try:
            (grads,) = torch.autograd.grad(
                score, acts, create_graph=inputs.create_graph, retain_graph=True
            )
        except RuntimeError as err:
            if "not have been used in the graph" not in str(err):
                raise
            cause = (
                "torch.compile traced the forward and its backward together, so the hooked "
                "tensor is not part of the logits' graph; explain `model._orig_mod` or compile "
                "with backend='eager'"
                if inputs.compiled
                else "another hook replaced it, or the logits come from another forward"
            )
            raise HookError(
                f"the logits do not depend on the captured output of layer "
                f"{inputs.layer_name!r} ({cause})."
            ) from err
        return inputs.fold(grads) if inputs.fold is not None else grads

    def maps(self, inputs: MapInputs, target: torch.Tensor | None, *, relu: bool) -> torch.Tensor:
        """Maps of ``target`` ``(B,)`` as ``(B, h, w)``, or of every class (``None``).

        Shape:
            - output: :math:`(B, h, w)`, or :math:`(B, K, h, w)` for ``target=None``
        """
        if target is not None:
            return self.from_gradients(inputs.acts, self.gradients(inputs, target), relu=relu)
        b, k = inputs.logits.shape
        device = inputs.logits.device
        per_class = [  # one gradient per class (K is small in training)
            self.maps(inputs, torch.full((b,), c, dtype=torch.long, device=device), relu=relu)
            for c in range(k)
        ]
        return torch.stack(per_class, dim=1)


class CaptumMethod(Method):
    """An attribution to input pixels computed by a captum class."""

    family: ClassVar[Family] = "attribution"
    needs_layer: ClassVar[bool] = False

    @abstractmethod
    def build(
        self, model: nn.Module, layer: nn.Module | None, options: Mapping[str, Any]
    ) -> AttributionFn:
        """Return ``fn(images, targets) -> (B, C, H, W)`` attributions."""


_REGISTRY: dict[str, Method] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: add an instance of ``cls`` to the registry under ``cls.name``.

    Raises:
        RangeError: The name is taken.
    """
    if cls.name in _REGISTRY:
        raise RangeError(f"an explanation method named {cls.name!r} is already registered.")
    _REGISTRY[cls.name] = cls()
    return cls


def method_names(family: Family | None = None) -> tuple[str, ...]:
    """Registered names, of one family or all, in registration order.

    Example:
        >>> method_names("cam")
        ('cam', 'grad_cam', 'hires_cam', 'grad_cam_pp')
    """
    return tuple(n for n, m in _REGISTRY.items() if family is None or m.family == family)


def get_method(name: str, family: Family | None = None) -> Method:
    """The registered method called ``name`` (of ``family`` when given).

    Raises:
        RangeError: No such method (the message lists the choices).

    Example:
        >>> get_method("grad_cam").family
        'cam'
    """
    method = _REGISTRY.get(name) if isinstance(name, str) else None
    if method is None or (family is not None and method.family != family):
        raise RangeError(f"`method` must be one of {list(method_names(family))}, got {name!r}.")
    return method


# --- the CAM family ------------------------------------------------------------------------


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
    default_relu = False

    def from_gradients(
        self, acts: torch.Tensor, grads: torch.Tensor, *, relu: bool
    ) -> torch.Tensor:
        r""":math:`\sum_c W_{kc} A_c` with ``grads`` the head rows ``(B, C, 1, 1)``."""
        return hires_cam(acts, grads.expand_as(acts), relu=relu)

    def gradients(self, inputs: MapInputs, target: torch.Tensor) -> torch.Tensor:
        """The head's rows of ``target``, ``(B, C, 1, 1)``."""
        return self._weight(inputs)[target][:, :, None, None]

    def maps(self, inputs: MapInputs, target: torch.Tensor | None, *, relu: bool) -> torch.Tensor:
        """CAMs from the head (all classes in one ``einsum``)."""
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


@register_method
class GradCAM(CAMMethod):
    """Grad-CAM (Selvaraju et al. 2017), :func:`~xai_feedback.functional.grad_cam`."""

    name = "grad_cam"
    citation = "R. R. Selvaraju et al., Grad-CAM, ICCV 2017."

    def cam_scale(self, h: int, w: int) -> float:
        """``h * w``: equals CAM for a GAP + linear head."""
        return float(h * w)

    def from_gradients(
        self, acts: torch.Tensor, grads: torch.Tensor, *, relu: bool
    ) -> torch.Tensor:
        """Grad-CAM maps."""
        return grad_cam(acts, grads, relu=relu)


@register_method
class HiResCAM(CAMMethod):
    """HiResCAM (Draelos & Carin 2020), :func:`~xai_feedback.functional.hires_cam`."""

    name = "hires_cam"
    citation = "R. L. Draelos, L. Carin, Use HiResCAM instead of Grad-CAM, arXiv:2011.08891."

    def cam_scale(self, h: int, w: int) -> float:
        """``h * w``: equals CAM for a GAP + linear head."""
        return float(h * w)

    def from_gradients(
        self, acts: torch.Tensor, grads: torch.Tensor, *, relu: bool
    ) -> torch.Tensor:
        """HiResCAM maps."""
        return hires_cam(acts, grads, relu=relu)


@register_method
class GradCAMPlusPlus(CAMMethod):
    """Grad-CAM++ (Chattopadhay et al. 2018), :func:`~xai_feedback.functional.grad_cam_pp`."""

    name = "grad_cam_pp"
    citation = "A. Chattopadhay et al., Grad-CAM++, WACV 2018."

    def cam_scale(self, h: int, w: int) -> float:
        """2: the weights tend to the positive head weights as activations tend to 0."""
        return 2.0

    def from_gradients(
        self, acts: torch.Tensor, grads: torch.Tensor, *, relu: bool
    ) -> torch.Tensor:
        """Grad-CAM++ maps."""
        return grad_cam_pp(acts, grads, relu=relu)


# --- the captum family ---------------------------------------------------------------------


@register_method
class Saliency(CaptumMethod):
    """Gradient magnitude (Simonyan et al. 2014); option ``abs`` (default True)."""

    name = "saliency"
    options = frozenset({"abs"})

    def build(
        self, model: nn.Module, layer: nn.Module | None, options: Mapping[str, Any]
    ) -> AttributionFn:
        """The captum class ``Saliency``."""
        from captum import attr

        sal = attr.Saliency(model)
        use_abs = bool(options.get("abs", True))
        return lambda x, t: sal.attribute(x, target=t, abs=use_abs)


class _TargetOnlyCaptum(CaptumMethod):
    """A captum method whose only argument is the target: ``captum_class(model)``."""

    captum_class: ClassVar[str]

    def build(
        self, model: nn.Module, layer: nn.Module | None, options: Mapping[str, Any]
    ) -> AttributionFn:
        """The captum class named :attr:`captum_class`."""
        from captum import attr

        method = getattr(attr, self.captum_class)(model)
        return lambda x, t: method.attribute(x, target=t)


@register_method
class InputXGradient(_TargetOnlyCaptum):
    """Input times gradient (Shrikumar et al. 2016)."""

    name = "input_x_gradient"
    captum_class = "InputXGradient"


@register_method
class Deconvnet(_TargetOnlyCaptum):
    """DeconvNet (Zeiler & Fergus 2014)."""

    name = "deconvnet"
    captum_class = "Deconvolution"


@register_method
class GuidedBackprop(_TargetOnlyCaptum):
    """Guided backpropagation (Springenberg et al. 2015)."""

    name = "guided_backprop"
    captum_class = "GuidedBackprop"


@register_method
class IntegratedGradients(CaptumMethod):
    """Integrated gradients (Sundararajan et al. 2017).

    Options ``n_steps`` (50), ``baselines`` (0) and ``internal_batch_size``.
    """

    name = "integrated_gradients"
    options = frozenset({"n_steps", "baselines", "internal_batch_size"})

    def build(
        self, model: nn.Module, layer: nn.Module | None, options: Mapping[str, Any]
    ) -> AttributionFn:
        """The captum class ``IntegratedGradients``."""
        from captum import attr

        ig = attr.IntegratedGradients(model)
        steps = check_int(options.get("n_steps", 50), "n_steps", minimum=1)
        baselines = options.get("baselines", 0.0)
        internal = options.get("internal_batch_size")
        return lambda x, t: ig.attribute(
            x, target=t, baselines=baselines, n_steps=steps, internal_batch_size=internal
        )


@register_method
class GuidedGradCAM(CaptumMethod):
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop times the upsampled Grad-CAM."""

    name = "guided_grad_cam"
    needs_layer = True

    def build(
        self, model: nn.Module, layer: nn.Module | None, options: Mapping[str, Any]
    ) -> AttributionFn:
        """The captum class ``GuidedGradCam`` on ``layer``."""
        from captum import attr

        if layer is None:
            raise LayerError("method 'guided_grad_cam' needs a layer.")
        ggc = attr.GuidedGradCam(model, layer)
        return lambda x, t: ggc.attribute(x, target=t)


# the relevance family lives in its own module (vision transformers); registered on import
from xai_feedback import relevance as _relevance  # noqa: E402, F401
