"""Argument checks with messages that name the argument, the expectation and what was received.

These helpers are for public entry points. Kernels call them on shapes and dtypes only
(metadata, no device synchronisation); value checks such as :func:`check_finite` read the
data and are used where a silent NaN would be worse than a synchronisation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from xai_feedback.errors import DTypeError, RangeError, ShapeError

__all__ = [
    "check_choice",
    "check_finite",
    "check_floating",
    "check_fractions",
    "check_int",
    "check_maps",
    "check_number",
    "check_same_batch",
    "check_shape",
    "check_tensor",
    "check_unit_range",
]


def check_tensor(x: Any, name: str) -> torch.Tensor:
    """Return ``x`` if it is a tensor, else raise :class:`DTypeError` naming ``name``."""
    if not isinstance(x, torch.Tensor):
        raise DTypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    return x


def check_shape(x: Any, pattern: str, name: str, **known: int | None) -> dict[str, int]:
    """Check that ``x`` is a tensor whose shape matches a space-separated ``pattern``.

    Each token of the pattern is a dimension name (``"B C H W"``) or a literal size
    (``"B 1 H W"``). Repeated names must have equal sizes, and names given in ``known``
    must have the given size (``None`` means "any").

    Args:
        x: The value to check.
        pattern: Space-separated dimension names or integers, e.g. ``"B C H W"``.
        name: The argument's name, used in the error message.
        **known: Sizes some named dimensions must have.

    Returns:
        The size bound to each named dimension.

    Raises:
        DTypeError: ``x`` is not a tensor.
        ShapeError: The rank or a size does not match.

    Example:
        >>> import torch
        >>> check_shape(torch.zeros(2, 1, 5, 5), "B C H W", "images", C=1)
        {'B': 2, 'C': 1, 'H': 5, 'W': 5}
    """
    check_tensor(x, name)
    tokens = pattern.split()
    shape = tuple(x.shape)
    if len(shape) != len(tokens):
        raise ShapeError(
            f"`{name}` must have shape ({', '.join(tokens)}) ({len(tokens)}-D), "
            f"got a {len(shape)}-D tensor of shape {shape}."
        )
    bound: dict[str, int] = {}
    for axis, (token, size) in enumerate(zip(tokens, shape, strict=True)):
        if token.isdigit():
            expected: int | None = int(token)
        elif token in bound:
            expected = bound[token]
        else:
            expected = known.get(token)
            bound[token] = size
        if expected is not None and size != expected:
            label = "" if token.isdigit() else f" ({token})"
            raise ShapeError(
                f"`{name}` must have shape ({', '.join(tokens)}), got shape {shape}: "
                f"dimension {axis}{label} must be {expected}, got {size}."
            )
    return bound


def check_maps(maps: Any, name: str = "maps") -> tuple[int, int]:
    """Check floating maps of shape ``(B, h, w)`` or ``(B, K, h, w)``; return ``(h, w)``."""
    check_floating(maps, name)
    if maps.dim() not in (3, 4):
        raise ShapeError(
            f"`{name}` must have shape (B, h, w) or (B, K, h, w), got a {maps.dim()}-D tensor "
            f"of shape {tuple(maps.shape)}."
        )
    return int(maps.shape[-2]), int(maps.shape[-1])


def check_floating(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise :class:`DTypeError` unless ``x`` has a floating-point dtype."""
    check_tensor(x, name)
    if not x.is_floating_point():
        raise DTypeError(f"`{name}` must have a floating-point dtype, got {x.dtype}.")
    return x


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise :class:`RangeError` if ``x`` holds NaN or infinite values (reads the data)."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise RangeError(f"`{name}` must be finite, got {n_bad} NaN or infinite value(s).")
    return x


def check_unit_range(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise :class:`RangeError` unless every value of ``x`` lies in [0, 1] (reads the data)."""
    check_finite(x, name)
    if x.numel() and (bool(x.min() < 0) or bool(x.max() > 1)):
        raise RangeError(
            f"`{name}` must lie in [0, 1], got values in "
            f"[{float(x.min()):.4g}, {float(x.max()):.4g}]."
        )
    return x


def check_int(
    value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Return ``value`` as an int if it is an integer within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DTypeError(f"`{name}` must be an int, got {type(value).__name__} ({value!r}).")
    if minimum is not None and value < minimum:
        raise RangeError(f"`{name}` must be >= {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise RangeError(f"`{name}` must be <= {maximum}, got {value}.")
    return value


def check_number(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
    strict_maximum: bool = False,
) -> float:
    """Return ``value`` as a float if it is a finite real number within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DTypeError(f"`{name}` must be a real number, got {type(value).__name__}.")
    number = float(value)
    if not math.isfinite(number):
        raise RangeError(f"`{name}` must be finite, got {value}.")
    if minimum is not None and (number <= minimum if strict_minimum else number < minimum):
        raise RangeError(
            f"`{name}` must be {'>' if strict_minimum else '>='} {minimum}, got {value}."
        )
    if maximum is not None and (number >= maximum if strict_maximum else number > maximum):
        raise RangeError(
            f"`{name}` must be {'<' if strict_maximum else '<='} {maximum}, got {value}."
        )
    return number


def check_fractions(fractions: Iterable[Any], name: str = "fractions") -> list[float]:
    """Return ``fractions`` sorted, if non-empty and each strictly between 0 and 1."""
    values = list(fractions)
    if not values:
        raise RangeError(f"`{name}` must not be empty.")
    for f in values:
        check_number(f, name, minimum=0, maximum=1, strict_minimum=True, strict_maximum=True)
    return sorted(float(f) for f in values)


def check_choice(value: Any, name: str, choices: Iterable[str] | Mapping[str, Any]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise :class:`RangeError` listing them."""
    options = sorted(choices)
    if not isinstance(value, str) or value not in options:
        raise RangeError(f"`{name}` must be one of {options}, got {value!r}.")
    return value


def check_same_batch(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> int:
    """Raise :class:`ShapeError` unless ``a`` and ``b`` have the same first dimension."""
    if a.shape[0] != b.shape[0]:
        raise ShapeError(
            f"`{a_name}` and `{b_name}` must have the same batch size, "
            f"got {a.shape[0]} and {b.shape[0]}."
        )
    return int(a.shape[0])
