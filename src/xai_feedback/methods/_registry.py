"""The registry of explanation methods: one name, one definition, one kind.

Each kind's base class and methods live in their own module of this package
(:mod:`~xai_feedback.methods.cam`, :mod:`~xai_feedback.methods.captum`,
:mod:`~xai_feedback.methods.relevance`); importing :mod:`xai_feedback.methods` registers them.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from xai_feedback.errors import DTypeError, RangeError

__all__ = ["Method", "MethodKind", "get_method", "method_names", "register_method"]

MethodKind = Literal["cam", "attribution", "relevance"]
"""The method families: maps of a layer's activations, captum attributions to the input
pixels, and the relevance of a transformer's attention."""


class Method(ABC):
    """An explanation method: a registered name, its kind, the options it accepts."""

    name: ClassVar[str]
    kind: ClassVar[MethodKind]
    citation: ClassVar[str] = ""
    options: ClassVar[frozenset[str]] = frozenset()
    """Keyword options the method accepts (validated by :meth:`check_options`)."""
    linear: ClassVar[bool] = False
    r"""Whether the map of a weighted score :math:`\sum_k w_k y_k` is
    :math:`\sum_k w_k` times class ``k``'s map (CAM, Grad-CAM, HiResCAM: linear in the
    score's gradient; what ``classes="projected"`` penalties need)."""

    def check_options(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """``options`` as a dict (``None``: empty), checked against what this method takes.

        Raises:
            DTypeError: ``options`` is not a mapping.
            RangeError: An option this method does not take.
        """
        if options is not None and not isinstance(options, Mapping):
            raise DTypeError(f"`options` must be a mapping, got {type(options).__name__}.")
        options = dict(options or {})
        unknown = sorted(set(options) - self.options)
        if unknown:
            allowed = sorted(self.options) or "none"
            raise RangeError(
                f"method {self.name!r} does not take option(s) {unknown}; it accepts: {allowed}."
            )
        return options


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


def method_names(kind: MethodKind | None = None) -> tuple[str, ...]:
    """Registered names, of one kind or all, in registration order, as of this call.

    Example:
        >>> method_names("cam")
        ('cam', 'grad_cam', 'hires_cam', 'grad_cam_pp')
    """
    return tuple(n for n, m in _REGISTRY.items() if kind is None or m.kind == kind)


def get_method(name: str, kind: MethodKind | None = None) -> Method:
    """The registered method called ``name`` (of ``kind`` when given).

    Raises:
        RangeError: No such method (the message lists the choices).

    Example:
        >>> get_method("grad_cam").kind
        'cam'
    """
    method = _REGISTRY.get(name) if isinstance(name, str) else None
    if method is None or (kind is not None and method.kind != kind):
        raise RangeError(f"`method` must be one of {list(method_names(kind))}, got {name!r}.")
    return method
