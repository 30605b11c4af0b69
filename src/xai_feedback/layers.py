"""Which layer to explain: unwrap wrapped models, resolve names, find the pooled feature map.

Every entry of the library that computes a map (:class:`~xai_feedback.hooks.CAMHook`,
:func:`~xai_feedback.attribution.attribute`, proxy attention,
:func:`~xai_feedback.pcace.pcace`, the penalties' objectives) resolves its ``layer=`` here:

- a module of the model, or its dotted name. Names are those of the *unwrapped* model; the
  ``module.`` prefix of ``nn.DataParallel`` / ``DistributedDataParallel`` and the
  ``_orig_mod.`` prefix of ``torch.compile`` are accepted and stripped;
- ``None``: the model's ``cam_layer`` attribute when it has one (the reference models do),
  else the **spatial feature map that feeds the global pooling and the classifier**, found from
  the model's structure (:func:`find_feature_layer`). That is ``layer4`` of a ResNet, ResNeXt
  or Wide-ResNet, ``features`` of VGG, DenseNet, MobileNet, EfficientNet and ConvNeXt,
  ``trunk_output`` of RegNet, and the last stage (or final norm/activation) of timm models.
  It is never "the last Conv2d", which in a ResNet is the second convolution inside the last
  residual branch.

When the structure does not tell, :class:`~xai_feedback.errors.LayerError` lists candidate
layers.
"""

from __future__ import annotations

import logging
import weakref
from typing import NamedTuple

from torch import nn

from xai_feedback.errors import DTypeError, LayerError

__all__ = ["ResolvedLayer", "find_feature_layer", "find_head", "resolve_layer", "unwrap_model"]

_log = logging.getLogger("xai_feedback")

_WRAPPER_ATTRS = ("module", "_orig_mod")
_PASSTHROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten)
_logged: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


class ResolvedLayer(NamedTuple):
    """A layer of a model: its dotted name in the unwrapped model and the module itself."""

    name: str
    module: nn.Module


def _is_wrapper(model: nn.Module) -> bool:
    name = type(model).__name__
    return name in ("DataParallel", "DistributedDataParallel", "OptimizedModule") and any(
        isinstance(getattr(model, attr, None), nn.Module) for attr in _WRAPPER_ATTRS
    )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside ``nn.DataParallel``, ``DistributedDataParallel`` and ``torch.compile``.

    Wrappers may be stacked (a compiled DDP model): all are removed. Hooks registered on the
    unwrapped model's modules fire when the wrapper runs (for ``torch.compile``, see
    :class:`~xai_feedback.hooks.CAMHook` for how a compiled graph that bypasses them is reported).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3))
        >>> unwrap_model(nn.DataParallel(net)) is net
        True
    """
    if not isinstance(model, nn.Module):
        raise DTypeError(f"`model` must be an nn.Module, got {type(model).__name__}.")
    while _is_wrapper(model):
        inner = next(getattr(model, a) for a in _WRAPPER_ATTRS if hasattr(model, a))
        model = inner
    return model


def _strip_prefixes(name: str) -> str:
    parts = name.split(".")
    while parts and parts[0] in _WRAPPER_ATTRS:
        parts = parts[1:]
    return ".".join(parts)


def _is_global_pool(module: nn.Module) -> bool:
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        size = module.output_size
        return size in (1, (1, 1))
    name = type(module).__name__
    return "GlobalPool" in name or name in ("SelectAdaptivePool2d", "AdaptiveAvgMaxPool2d")


def _has(module: nn.Module, kinds: tuple[type[nn.Module], ...]) -> bool:
    return any(isinstance(m, kinds) for m in module.modules())


def _is_head(module: nn.Module) -> bool:
    """A classifier head: holds a Linear (or is a global pool) and no convolution."""
    if _has(module, (nn.Conv2d,)) and not _is_global_pool(module):
        return False
    return _has(module, (nn.Linear,)) or any(_is_global_pool(m) for m in module.modules())


def _is_spatial(name: str, module: nn.Module) -> bool:
    """Could produce the feature map: anything but pass-through, pooling and pre-logits."""
    if name == "pre_logits":  # timm: the head's first part (e.g. VGG's ConvMlp), after pooling
        return False
    if isinstance(module, _PASSTHROUGH) or _is_global_pool(module):
        return False
    return not isinstance(
        module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d | nn.AvgPool2d | nn.MaxPool2d
    )


def _search(module: nn.Module, prefix: str) -> str | None:
    children = list(module.named_children())
    for i, (_, child) in enumerate(children):
        if not _is_head(child):
            continue
        for name, before in reversed(children[:i]):
            if _is_spatial(name, before):
                return prefix + name
        return None
    # No head at this level: descend into the single child that holds the convolutions and
    # the last Linear (a model wrapped in a container, e.g. Sequential(normalize, resnet)).
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None
    holders = [(n, c) for n, c in children if any(m is linears[-1] for m in c.modules())]
    if len(holders) == 1 and _has(holders[0][1], (nn.Conv2d,)):
        name, child = holders[0]
        return _search(child, f"{prefix}{name}.")
    return None


def _candidates(model: nn.Module, limit: int = 8) -> list[str]:
    names = [n for n, m in model.named_modules() if n and _has(m, (nn.Conv2d,))]
    top = [n for n in names if "." not in n]
    return (top or names)[-limit:]


def find_feature_layer(model: nn.Module) -> str:
    """Dotted name of the spatial feature map that feeds the global pooling and the classifier.

    Read from the model's structure: the classifier head is the first child (at the top level,
    or inside the one child that holds the whole network) that holds a ``Linear`` or a global
    pooling and no convolution; the feature layer is the last child before it that is not a
    pass-through (``Identity``, ``Dropout``, ``Flatten``) or pooling module. A model with a
    ``cam_layer`` attribute (a dotted name) uses it.

    Raises:
        LayerError: The structure does not tell; the message lists candidate layers.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(8, 2))
        >>> find_feature_layer(net)
        '1'
    """
    model = unwrap_model(model)
    named = getattr(model, "cam_layer", None)
    if isinstance(named, str):
        return named
    found = _search(model, "")
    if found is None:
        raise LayerError(
            f"cannot tell which layer of {type(model).__name__} feeds its global pooling and "
            f"classifier; pass `layer=` (a module or dotted name). Candidates: "
            f"{_candidates(model)}."
        )
    return found


def find_head(model: nn.Module) -> ResolvedLayer:
    """The model's linear classifier, ``(name, module)``.

    ``model.classifier`` if it is an ``nn.Linear``, else the last ``nn.Linear`` of the model.

    Raises:
        LayerError: The model has no ``nn.Linear``.
    """
    model = unwrap_model(model)
    spec = getattr(model, "classifier", None)
    if isinstance(spec, nn.Linear):
        return ResolvedLayer("classifier", spec)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise LayerError("method 'cam' needs a linear head: `model` has no nn.Linear.")
    return ResolvedLayer(*linears[-1])


def resolve_layer(model: nn.Module, layer: nn.Module | str | None = None) -> ResolvedLayer:
    """Resolve ``layer`` (a module, a dotted name, or ``None``) to ``(name, module)``.

    Args:
        model: The model, possibly wrapped (DataParallel, DDP, ``torch.compile``).
        layer: A module of ``model``; a dotted name (``module.`` / ``_orig_mod.`` prefixes
            accepted); or ``None`` for :func:`find_feature_layer`. The first resolution of a
            default layer per model is logged (logger ``"xai_feedback"``, level INFO).

    Returns:
        The name in the unwrapped model and the module.

    Raises:
        LayerError: The name does not exist, the module is not part of ``model``, or there is
            no default (the message lists candidates).
        DTypeError: ``layer`` is neither a module, a string nor ``None``.

    Example:
        >>> from xai_feedback.models import GAPNet
        >>> resolve_layer(nn.DataParallel(GAPNet(width=4)), None).name
        'features'
    """
    inner = unwrap_model(model)
    if isinstance(layer, nn.Module):
        for name, module in inner.named_modules():
            if module is layer:
                return ResolvedLayer(name, module)
        raise LayerError(
            f"`layer` is a module ({type(layer).__name__}) that is not part of `model`."
        )
    default = layer is None
    if layer is None:
        layer = find_feature_layer(inner)
    if not isinstance(layer, str):
        raise DTypeError(
            f"`layer` must be an nn.Module, a dotted name or None, got {type(layer).__name__}."
        )
    name = _strip_prefixes(layer)
    modules = dict(inner.named_modules())
    if name not in modules:
        close = [n for n in modules if n and (name in n or n in name)][:5]
        raise LayerError(
            f"`layer` {layer!r} is not a module of the model"
            + (f"; similar names: {close}" if close else f"; candidates: {_candidates(inner)}")
            + "."
        )
    if default and _logged.get(inner) != name:
        _logged[inner] = name
        _log.info("xai_feedback: explaining layer %r of %s", name, type(inner).__name__)
    return ResolvedLayer(name, modules[name])
