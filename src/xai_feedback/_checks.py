"""Argument checks with messages that name the argument, the expectation and what was received.

These helpers are for public entry points. Kernels call them on shapes and dtypes only
(metadata, no device synchronisation); value checks such as :func:`check_finite` read the
data and are used where a silent NaN would be worse than a synchronisation.
"""

from __future__ import annotations

import itertools
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
    "check_labels",
    "check_maps",
    "check_masks",
    "check_model_input",
    "check_nonempty",
    "check_number",
    "check_same_batch",
    "check_shape",
    "check_size",
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


def on_accelerator(x: torch.Tensor) -> bool:
    """Whether reading ``x``'s data from Python would synchronise with a device."""
    return x.device.type not in ("cpu", "meta")


def check_finite(x: torch.Tensor, name: str, *, sync: bool = True) -> torch.Tensor:
    """Raise :class:`RangeError` if ``x`` holds NaN or infinite values (reads the data).

    A tensor on the ``meta`` device has no data and passes. With ``sync=False`` (the
    training-step path), a tensor on an accelerator is checked by a device-side assertion
    (``torch._assert_async``, no host synchronisation; a failure aborts the device's stream
    with the same message); on the CPU the check is the same as with ``sync=True``.
    """
    if not sync and on_accelerator(x):
        if x.is_floating_point():
            torch._assert_async(
                torch.isfinite(x).all(), f"`{name}` must be finite, got NaN or infinite values."
            )
        return x
    if x.is_floating_point() and x.device.type != "meta" and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise RangeError(f"`{name}` must be finite, got {n_bad} NaN or infinite value(s).")
    return x


def check_unit_range(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise :class:`RangeError` unless every value of ``x`` lies in [0, 1] (reads the data)."""
    check_finite(x, name)
    if x.numel() and x.device.type != "meta" and (bool(x.min() < 0) or bool(x.max() > 1)):
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


def check_size(size: Any, name: str = "size") -> tuple[int, int]:
    """Return ``size`` as an ``(H, W)`` pair of ints >= 1 (a map's or an image's size).

    Example:
        >>> check_size([28, 28])
        (28, 28)
    """
    if not isinstance(size, tuple | list) or len(size) != 2:
        raise ShapeError(f"`{name}` must be a pair (H, W), got {size!r}.")
    return (
        check_int(size[0], f"{name}[0]", minimum=1),
        check_int(size[1], f"{name}[1]", minimum=1),
    )


def check_sizes(**sizes: Any) -> None:
    """Check that each keyword argument is an int >= 1 (channels, classes, widths, depths).

    Example:
        >>> check_sizes(in_channels=3, width=16)
    """
    for name, value in sizes.items():
        check_int(value, name, minimum=1)


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
    """Return ``fractions`` sorted, if non-empty, distinct and each strictly between 0 and 1.

    Raises:
        DTypeError: ``fractions`` is not an iterable of real numbers (a string, a number).
        RangeError: Empty, a value outside (0, 1), or a value given twice.
    """
    if isinstance(fractions, str | bytes) or not isinstance(fractions, Iterable):
        raise DTypeError(
            f"`{name}` must be an iterable of numbers in (0, 1), got {type(fractions).__name__}."
        )
    values = list(fractions)
    if not values:
        raise RangeError(f"`{name}` must not be empty.")
    for f in values:
        check_number(f, name, minimum=0, maximum=1, strict_minimum=True, strict_maximum=True)
    ordered = sorted(float(f) for f in values)
    repeated = sorted({a for a, b in itertools.pairwise(ordered) if a == b})
    if repeated:
        raise RangeError(f"`{name}` must be distinct, got {repeated} more than once.")
    return ordered


def check_nonempty(x: torch.Tensor, name: str, what: str = "batch") -> int:
    """Raise :class:`ShapeError` if ``x`` has no rows (first dimension 0); return the count.

    Example:
        >>> check_nonempty(torch.zeros(3, 2), "images")
        3
    """
    check_tensor(x, name)
    if x.dim() == 0 or x.shape[0] == 0:
        raise ShapeError(
            f"`{name}` must be a non-empty {what} (at least one row), got shape {tuple(x.shape)}."
        )
    return int(x.shape[0])


def check_labels(
    labels: Any, name: str = "labels", num_classes: int | None = None, *, sync: bool = True
) -> torch.Tensor:
    """Check integer class labels in ``[0, num_classes)``; negative labels are never wrapped.

    Reads the data (one synchronisation) to check the range; with ``sync=False``, labels on an
    accelerator are checked by a device-side assertion instead (see :func:`check_finite`).

    Raises:
        DTypeError: Not a tensor, or not an integer dtype (float or bool).
        RangeError: A label below 0 or at least ``num_classes``.

    Example:
        >>> check_labels(torch.tensor([0, 2]), "labels", 3)
        tensor([0, 2])
    """
    tensor = check_tensor(labels, name)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise DTypeError(f"`{name}` must hold integer class indices, got dtype {tensor.dtype}.")
    if tensor.numel() == 0 or tensor.device.type == "meta":
        return tensor
    if not sync and on_accelerator(tensor):
        top = num_classes if num_classes is not None else torch.iinfo(torch.int64).max
        expected = f"[0, {num_classes})" if num_classes is not None else "[0, inf)"
        torch._assert_async(
            ((tensor >= 0) & (tensor < top)).all(),
            f"`{name}` must hold classes in {expected} (negative indices are not wrapped).",
        )
        return tensor
    low, high = int(tensor.min()), int(tensor.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        expected = f"[0, {num_classes})" if num_classes is not None else "[0, inf)"
        raise RangeError(
            f"`{name}` must hold classes in {expected}, got values in [{low}, {high}] "
            "(negative indices are not wrapped)."
        )
    return tensor


def _model_reference(model: torch.nn.Module) -> torch.Tensor | None:
    for param in model.parameters():
        return param
    for buffer in model.buffers():
        if buffer.is_floating_point():
            return buffer
    return None


def check_model_input(model: torch.nn.Module, images: Any, name: str = "images") -> torch.Tensor:
    """Raise unless ``images`` match the dtype and device of ``model``'s first parameter.

    Metadata only (no synchronisation): a float64 batch into a float32 model, or a CPU
    batch into a CUDA model, is refused with both sides named instead of failing deep
    inside a convolution. A model without parameters accepts anything; under
    ``torch.autocast`` for the images' device the dtypes may differ (autocast casts them).

    Raises:
        DTypeError: ``images`` is not a floating tensor, or its dtype or device differs from
            the model's (dtype and device together are the tensor's type, e.g.
            ``torch.cuda.FloatTensor``).

    Example:
        >>> check_model_input(torch.nn.Linear(2, 1), torch.zeros(1, 2)).dtype
        torch.float32
    """
    tensor = check_floating(images, name)
    ref = _model_reference(model)
    if ref is None:
        return tensor
    autocast = images.device.type != "meta" and torch.is_autocast_enabled(images.device.type)
    if ref.is_floating_point() and images.dtype != ref.dtype and not autocast:
        raise DTypeError(
            f"`{name}` must have the model's dtype {ref.dtype}, got {images.dtype} "
            f"(convert with images.to({ref.dtype}) or model.to({images.dtype}))."
        )
    if images.device != ref.device:
        raise DTypeError(
            f"`{name}` must be on the model's device {ref.device}, got {images.device} "
            f"(move one with .to(device))."
        )
    return tensor


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


def check_masks(masks: Any, name: str = "masks", *, sync: bool = True) -> torch.Tensor:
    """Check annotation masks: boolean, or real values in [0, 1] (finite); reads the data.

    Masks weight pixels (1: the annotated region, 0: elsewhere, in between: partly), so a
    value outside [0, 1] gives a silently wrong answer rather than a NaN. The common mistake,
    a 0/255 mask read from an 8-bit image, gets a message that says to divide by 255. Integer
    dtypes (``uint8``, ``int64``) must hold 0 and 1 only. With ``sync=False`` (the
    training-step path) a mask on an accelerator is checked by a device-side assertion, as in
    :func:`check_finite`; the shape is the caller's to check.

    Raises:
        DTypeError: ``masks`` is not a tensor, or is complex.
        RangeError: A value is NaN, infinite, below 0 or above 1.

    Example:
        >>> check_masks(torch.tensor([[0.0, 0.5, 1.0]])).shape
        torch.Size([1, 3])
        >>> try:
        ...     check_masks(torch.tensor([[0, 255]], dtype=torch.uint8))
        ... except RangeError as error:
        ...     print(str(error)[50:72], "Divide it by 255" in str(error))
        got values in [0, 255] True
    """
    x = check_tensor(masks, name)
    if x.dtype == torch.bool or x.device.type == "meta" or x.numel() == 0:
        return x
    if x.is_complex():
        raise DTypeError(f"`{name}` must be boolean or real, got {x.dtype}.")
    inside = ((x >= 0) & (x <= 1)).all()  # NaN compares False: refused too
    expected = f"`{name}` must be boolean or hold values in [0, 1]"
    if not sync and on_accelerator(x):
        torch._assert_async(inside, f"{expected}, got values outside (or NaN).")
        return x
    if bool(inside):
        return x
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise RangeError(f"{expected}, got {n_bad} NaN or infinite value(s).")
    low, high = float(x.min()), float(x.max())
    got = f"{expected}, got values in [{low:.4g}, {high:.4g}] (dtype {x.dtype})"
    if low >= 0 and 1 < high <= 255:
        raise RangeError(
            f"{got}: a 0/255 mask, as read from an 8-bit image? Divide it by 255 (or "
            f"compare: {name} > 127)."
        )
    raise RangeError(f"{got}.")
