"""One registry of explanation methods: one name, one definition, used everywhere.

:class:`~xai_feedback.hooks.CAMHook`, :class:`~xai_feedback.relevance.AttentionCapture`,
:func:`~xai_feedback.attribution.attribute`, proxy attention and the objectives all look
methods up here, so ``"grad_cam"`` means the same computation on every path. Three families,
each in its own module, registered when this package is imported:

- **CAM** (:mod:`~xai_feedback.methods.cam`, :class:`CAMMethod`): a layer's activations
  ``(B, C, h, w)`` (and ``dy/dA``) to maps ``(B, h, w)``: ``"cam"``, ``"grad_cam"``,
  ``"hires_cam"``, ``"grad_cam_pp"``; the ``scale="cam"`` rule is described there;
- **attribution** (:mod:`~xai_feedback.methods.captum`, :class:`CaptumMethod`): captum's
  attributions to input pixels: ``"saliency"``, ``"input_x_gradient"``, ``"deconvnet"``,
  ``"guided_backprop"``, ``"integrated_gradients"``, ``"guided_grad_cam"``;
- **relevance** (:mod:`~xai_feedback.methods.relevance`, :class:`RelevanceMethod`): a vision
  transformer's attention probabilities to maps: ``"rollout"``, ``"chefer_relevance"``.

:func:`method_names` lists what is registered at the time of the call (a method registered
by the user included); :func:`get_method` returns one.

Adding a method: subclass the kind's base class, set ``name``, and decorate the class with
:func:`register_method`.

Example:
    >>> method_names("relevance")
    ('rollout', 'chefer_relevance')
"""

from xai_feedback.methods._registry import (
    Method,
    MethodKind,
    get_method,
    method_names,
    register_method,
)
from xai_feedback.methods.cam import SCALES, CAMMethod, MapInputs
from xai_feedback.methods.captum import AttributionFn, CaptumMethod
from xai_feedback.methods.relevance import (
    AttentionInputs,
    CheferRelevance,
    RelevanceMethod,
    Rollout,
)

__all__ = [
    "SCALES",
    "AttentionInputs",
    "AttributionFn",
    "CAMMethod",
    "CaptumMethod",
    "CheferRelevance",
    "MapInputs",
    "Method",
    "MethodKind",
    "RelevanceMethod",
    "Rollout",
    "get_method",
    "method_names",
    "register_method",
]
