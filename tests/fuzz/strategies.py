"""Shared hypothesis strategies and the outcome rule of the fuzz suite.

Tensors are drawn as (shape, dtype, device, kind, seed) rather than element by element: the
values come from a seeded ``torch.Generator`` shaped by ``kind`` (ordinary, zeros, constant,
huge, tiny, NaN, +-inf), so a case stays cheap and hypothesis still shrinks it to the
smallest shape and the simplest kind.

The rule every property applies (:func:`outcome`): a call either returns, and then the test
checks the result (finite, shape, dtype, device, and where cheap an independent reference),
or raises an :class:`~xai_feedback.errors.XAIFeedbackError` whose message names one of the
arguments; any other exception fails the test. Each case is tallied per area, input class
and outcome in :data:`COUNTS`; ``tests/fuzz/count_cases.py`` prints the tally.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from hypothesis import settings
from hypothesis import strategies as st

from xai_feedback.errors import XAIFeedbackError

T = TypeVar("T")

COUNTS: Counter[tuple[str, str, str]] = Counter()
"""``(area, input class, outcome)`` -> number of generated cases that passed."""

FAST = settings(max_examples=200, deadline=None, derandomize=True, database=None)
"""Settings of the cheap kernels."""
SLOW = settings(max_examples=40, deadline=None, derandomize=True, database=None)
"""Settings of properties that run a model (forward and backward passes)."""

KINDS = ("uniform", "normal", "zeros", "constant", "huge", "tiny", "nan", "inf", "-inf")
"""Value kinds of a drawn tensor; the last three are non-finite."""
FINITE_KINDS = KINDS[:6]
BAD_DTYPES = (torch.int64, torch.bool)


@dataclass(frozen=True)
class Spec:
    """How a tensor was drawn: enough to describe the input class of a case."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    kind: str
    device: str = "cpu"

    @property
    def finite(self) -> bool:
        return self.kind in FINITE_KINDS

    def label(self) -> str:
        if self.device != "cpu":
            return f"device {self.device}"
        if not self.dtype.is_floating_point:
            return f"dtype {str(self.dtype).removeprefix('torch.')}"
        if 0 in self.shape:
            return "empty"
        if not self.finite:
            return "NaN/Inf"
        if self.kind in ("huge", "tiny"):
            return "extreme magnitude"
        return "valid"


def magnitude(dtype: torch.dtype, kind: str, budget: int = 2) -> float:
    """Scale of ``"huge"``/``"tiny"`` values: ``max ** (1 / budget)`` so products of
    ``budget`` factors still fit the dtype (``budget=1``: near the dtype's limit)."""
    info = torch.finfo(dtype)
    if kind == "huge":
        return float(info.max) ** (1.0 / budget) / 16
    return float(info.tiny) ** (1.0 / budget) * 16


def make(spec: Spec, seed: int, budget: int = 2) -> torch.Tensor:
    """The tensor a :class:`Spec` describes (values from a generator seeded with ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    n = 1
    for size in spec.shape:
        n *= size
    if not spec.dtype.is_floating_point:
        if spec.dtype == torch.bool:
            values = torch.rand(n, generator=g) < 0.5
        else:
            values = torch.randint(-3, 10, (n,), generator=g)
        return values.to(spec.dtype).view(spec.shape).to(spec.device)
    base = torch.rand(n, generator=g, dtype=torch.float64)
    if spec.kind == "normal":
        base = torch.randn(n, generator=g, dtype=torch.float64)
    elif spec.kind == "zeros":
        base = torch.zeros(n, dtype=torch.float64)
    elif spec.kind == "constant":
        base = torch.full((n,), 0.37, dtype=torch.float64)
    elif spec.kind in ("huge", "tiny"):
        base = (base - 0.5) * 2 * magnitude(spec.dtype, spec.kind, budget)
    x = base.to(spec.dtype)
    if spec.kind in ("nan", "inf", "-inf") and n:
        bad = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}[spec.kind]
        x[int(torch.randint(n, (1,), generator=g))] = bad
    return x.view(spec.shape).to(spec.device)


@st.composite
def specs(
    draw: st.DrawFn,
    shape: st.SearchStrategy[tuple[int, ...]],
    *,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
    kinds: Sequence[str] = KINDS,
    bad_dtype: float = 0.0,
    meta: float = 0.0,
    clean: float = 0.5,
) -> Spec:
    """A :class:`Spec`; ``bad_dtype``/``meta``: chances of an int/bool dtype, of the meta device."""
    dims = draw(shape)
    if draw(st.floats(0, 1)) < clean:  # an ordinary tensor: the bad classes are not diluted
        ordinary = [k for k in kinds if k in ("uniform", "normal")] or list(kinds)
        return Spec(tuple(dims), draw(st.sampled_from(dtypes)), draw(st.sampled_from(ordinary)))
    roll = draw(st.floats(0, 1))
    dtype = draw(st.sampled_from(BAD_DTYPES)) if roll < bad_dtype else draw(st.sampled_from(dtypes))
    device = "meta" if draw(st.floats(0, 1)) < meta else "cpu"
    return Spec(tuple(dims), dtype, draw(st.sampled_from(kinds)), device)


def sizes(low: int = 1, high: int = 5) -> st.SearchStrategy[int]:
    return st.integers(low, high)


def shapes(*ranges: tuple[int, int]) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes with each dimension drawn from its ``(low, high)``."""
    return st.tuples(*(st.integers(lo, hi) for lo, hi in ranges))


def mostly(*options: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """One of ``options``: the last (the bad one, e.g. :func:`any_rank`) a quarter of the time,
    the others evenly otherwise."""
    *good, bad = options
    return st.integers(0, 4 * len(good) - 1).flatmap(
        lambda i: bad if i < len(good) else good[i % len(good)]
    )


def any_rank(max_rank: int = 5, high: int = 4) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes of any rank up to ``max_rank`` (wrong ranks for most arguments)."""
    return st.lists(st.integers(0, high), min_size=0, max_size=max_rank).map(tuple)


seeds = st.integers(0, 2**16)


def tally(area: str, label: str, result: str) -> None:
    COUNTS[(area, label, result)] += 1


def outcome(
    area: str, label: str, call: Callable[[], T], names: Sequence[str]
) -> tuple[T | None, XAIFeedbackError | None]:
    """Run ``call``: return ``(result, None)`` or ``(None, error)`` for a library error whose
    message names one of ``names`` (in backticks); any other exception propagates (a failure).
    """
    try:
        result = call()
    except XAIFeedbackError as error:
        message = str(error)
        assert any(f"`{name}" in message or name in message for name in names), (
            f"{type(error).__name__} does not name any of {list(names)}: {message}"
        )
        assert re.search(r"got|must|needs?|cannot|candidates|expected", message), message
        tally(area, label, type(error).__name__)
        return None, error
    tally(area, label, "result")
    return result, None


def assert_finite(x: torch.Tensor, what: str = "result") -> None:
    if x.device.type == "meta" or not x.is_floating_point():
        return
    assert bool(torch.isfinite(x).all()), f"{what} holds NaN/Inf: {x}"


def close(a: torch.Tensor, b: torch.Tensor, *, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol)


def expect_error(error: XAIFeedbackError | None, *kinds: type[Exception]) -> None:
    """The case had to be refused, with one of ``kinds``."""
    assert error is not None, "a bad input was accepted"
    assert isinstance(error, kinds), f"expected {[k.__name__ for k in kinds]}, got {error!r}"


def model_dtype_ok(spec: Spec, reference: Any = torch.float32) -> bool:
    return spec.dtype == reference and spec.device == "cpu"
