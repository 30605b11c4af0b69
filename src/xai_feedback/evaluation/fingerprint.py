"""Fingerprints of what determines a stored result: data, explainers, training code, settings.

A fingerprint is the SHA-256 of a canonical JSON document (sorted keys, no whitespace). The
document is built by :func:`identity`, which turns the ingredients of a run into plain JSON:

- tensors become the SHA-256 of their bytes (plus dtype and shape), computed once per tensor
  (and again only after an in-place change);
- functions become ``module.qualname`` plus a digest of their byte code, their defaults and the
  identities of the variables they close over (a lambda that calls another model is another
  explainer; captured lists, dicts and sets count by type only, as they often hold logs);
  ``functools.partial`` objects the identity of their function and arguments;
- modules (``nn.Module``) their class and the hash of their ``state_dict``;
- other objects their class's qualified name: give them a ``config`` to tell versions apart.

:class:`Fingerprint` keeps a stored record's identity document next to its digest, so a
mismatch can say what differs (:class:`~xai_feedback.evaluation.store.RunStore`).

Example:
    >>> import torch
    >>> a = fingerprint({"x": torch.ones(3)}); b = fingerprint({"x": torch.ones(3)})
    >>> a == b, a == fingerprint({"x": torch.zeros(3)}), len(a)
    (True, False, 64)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import types
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["Fingerprint", "canonical_json", "fingerprint", "identity", "tensor_digest"]

_DIGESTS: dict[int, tuple[weakref.ref[torch.Tensor], int, str]] = {}
"""``id(tensor) -> (weak reference, version, digest)`` (tensors compare elementwise, so no
``WeakKeyDictionary``); an entry goes when its tensor does."""
_MAX_DEPTH = 8
"""Callables (closures, partials, bound methods) nested deeper count by their type only."""


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes; cached per tensor until it changes.

    Example:
        >>> tensor_digest(torch.arange(4)) == tensor_digest(torch.arange(4))
        True
    """
    version = int(tensor._version)
    cached = _DIGESTS.get(id(tensor))
    if cached is not None and cached[0]() is tensor and cached[1] == version:
        return cached[2]
    flat = tensor.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{flat.dtype}{tuple(flat.shape)}".encode())
    h.update(flat.reshape(-1).view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    digest = h.hexdigest()
    key = id(tensor)
    with contextlib.suppress(TypeError):  # not weak-referenceable: no cache
        ref = weakref.ref(tensor, lambda _: _DIGESTS.pop(key, None))
        _DIGESTS[key] = (ref, version, digest)
    return digest


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _code_digest(code: types.CodeType) -> str:
    h = hashlib.sha256(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        is_code = isinstance(const, types.CodeType)
        h.update((_code_digest(const) if is_code else repr(const)).encode())
    return h.hexdigest()


def _function_identity(fn: types.FunctionType, depth: int) -> dict[str, Any]:
    cells = [c.cell_contents for c in fn.__closure__ or () if _has_contents(c)]
    return {
        "callable": _qualname(fn),
        "code": _code_digest(fn.__code__),
        "defaults": identity(fn.__defaults__ or (), depth + 1),
        "closure": [_closure_identity(c, depth + 1) for c in cells],
    }


def _closure_identity(value: Any, depth: int) -> Any:
    """Captured values that define behavior; containers (counters, logs) only by type."""
    if isinstance(value, list | dict | set):
        return {"object": _qualname(type(value))}
    return identity(value, depth)


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:  # an empty cell
        return False
    return True


def _module_identity(module: nn.Module) -> dict[str, Any]:
    state = {k: tensor_digest(v) for k, v in module.state_dict().items()}
    return {"module": _qualname(type(module)), "state": state}


def identity(obj: Any, depth: int = 0) -> Any:
    """A JSON-ready description of ``obj`` that changes when ``obj`` does (see module docs).

    Example:
        >>> identity({"fill": "zero", "fractions": (0.5,)})
        {'fill': 'zero', 'fractions': [0.5]}
    """
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, torch.Tensor):
        return {"tensor": tensor_digest(obj)}
    if isinstance(obj, Mapping):
        return {str(k): identity(v, depth) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [identity(v, depth) for v in obj]
    if depth > _MAX_DEPTH:  # callables nested this deep count by type
        return {"object": _qualname(type(obj))}
    if isinstance(obj, nn.Module):
        return _module_identity(obj)
    if isinstance(obj, functools.partial):
        parts = [obj.func, list(obj.args), dict(obj.keywords)]
        return {"partial": identity(parts, depth + 1)}
    if isinstance(obj, types.FunctionType):
        return _function_identity(obj, depth)
    if isinstance(obj, types.MethodType):
        return {"method": _qualname(obj.__func__), "self": identity(obj.__self__, depth + 1)}
    if isinstance(obj, type | types.BuiltinFunctionType | types.ModuleType):
        return {"object": _qualname(obj)}
    return {"object": _qualname(type(obj))}


def canonical_json(document: Any) -> str:
    """Sorted-keys, whitespace-free JSON: the bytes a fingerprint is taken over."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=True)


def fingerprint(obj: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of :func:`identity` of ``obj``."""
    return hashlib.sha256(canonical_json(identity(obj)).encode()).hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """A record's identity document and its SHA-256 (``digest``).

    Example:
        >>> key = Fingerprint.of({"fill": "zero", "fraction": 0.5})
        >>> key.document, key.digest == Fingerprint.of({"fraction": 0.5, "fill": "zero"}).digest
        ({'fill': 'zero', 'fraction': 0.5}, True)
    """

    document: dict[str, Any]
    digest: str

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> Fingerprint:
        """Fingerprint of a JSON-ready document (see :func:`identity`)."""
        text = canonical_json(document)
        return cls(json.loads(text), hashlib.sha256(text.encode()).hexdigest())
