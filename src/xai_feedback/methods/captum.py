"""The attribution kind: attributions to input pixels ``(B, C, H, W)`` computed by captum.

``"saliency"``, ``"input_x_gradient"``, ``"deconvnet"``, ``"guided_backprop"``,
``"integrated_gradients"``, ``"guided_grad_cam"``; :func:`~xai_feedback.attribution.attribute`
runs them (captum is imported only when a method is built).

Adding a method: subclass :class:`CaptumMethod`, set ``name``, write :meth:`CaptumMethod.build`
(returning ``fn(images, targets)``) and decorate the class with
:func:`~xai_feedback.methods.register_method`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from xai_feedback._checks import check_int
from xai_feedback.errors import LayerError
from xai_feedback.methods._registry import Method, MethodKind, register_method

__all__ = [
    "AttributionFn",
    "CaptumMethod",
    "Deconvnet",
    "GuidedBackprop",
    "GuidedGradCAM",
    "InputXGradient",
    "IntegratedGradients",
    "Saliency",
]

AttributionFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``fn(images, targets) -> attributions`` built by :meth:`CaptumMethod.build`."""


class CaptumMethod(Method):
    """An attribution to input pixels computed by a captum class."""

    kind: ClassVar[MethodKind] = "attribution"
    needs_layer: ClassVar[bool] = False

    @abstractmethod
    def build(
        self, model: nn.Module, layer: nn.Module | None, options: Mapping[str, Any]
    ) -> AttributionFn:
        """Return ``fn(images, targets) -> (B, C, H, W)`` attributions."""


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
