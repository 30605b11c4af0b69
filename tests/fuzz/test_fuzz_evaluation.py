"""Fuzz: ROAD and selectivity input checks, and the shared argument checks (_checks.py)."""

from __future__ import annotations

import math
import warnings

import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import (
    FAST,
    SLOW,
    Spec,
    assert_finite,
    expect_error,
    make,
    outcome,
    seeds,
)
from xai_feedback._checks import check_fractions, check_labels, check_shape
from xai_feedback.errors import DTypeError, RangeError, ShapeError
from xai_feedback.evaluation import road, selectivity
from xai_feedback.models import GAPNet

K = 3
_MODEL: list[GAPNet] = []


def _model() -> GAPNet:
    if not _MODEL:
        model = GAPNet(1, K, width=1, depth=2, generator=torch.Generator().manual_seed(0))
        _MODEL.append(model.eval())
    return _MODEL[0]


fraction_lists = st.lists(
    st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.25, 0.5]), st.just(float("nan"))),
    max_size=4,
)


@SLOW
@given(
    n=st.integers(0, 3),
    kind=st.sampled_from(["uniform", "uniform", "nan"]),
    att_kind=st.sampled_from(["uniform", "uniform", "nan"]),
    label_shift=st.sampled_from([0, 0, 0, -1, K]),
    fractions=st.one_of(st.just([0.25, 0.5]), fraction_lists),
    which=st.sampled_from(["road", "selectivity"]),
    dtype=st.sampled_from([torch.float32, torch.float32, torch.float64]),
    seed=seeds,
)
def test_road_and_selectivity(
    n: int,
    kind: str,
    att_kind: str,
    label_shift: int,
    fractions: list[float],
    which: str,
    dtype: torch.dtype,
    seed: int,
) -> None:
    model = _model()
    x = make(Spec((n, 1, 4, 4), dtype, kind), seed)
    att = make(Spec((n, 1, 4, 4), torch.float32, att_kind), seed + 1)
    y = torch.randint(0, K, (n,), generator=torch.Generator().manual_seed(seed))
    if n and label_shift:
        y[0] = label_shift if label_shift < 0 else K
    g = torch.Generator().manual_seed(seed)
    if which == "road":
        call = lambda: road(model, x, y, {"a": att}, fractions=fractions, generator=g)  # noqa: E731
    else:
        call = lambda: selectivity(model, x, y, {"a": lambda i, t: att}, patch=2, generator=g)  # noqa: E731
    label = "empty" if n == 0 else Spec((n,), dtype, kind).label()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out, error = outcome(which, label, call, ["images", "target", "fractions", "methods"])
    bad_fractions = which == "road" and (
        not fractions
        or any(not (0 < f < 1) for f in fractions)
        or len({float(f) for f in fractions}) != len(fractions)
    )
    if bad_fractions:
        expect_error(error, RangeError)
        return
    if n == 0:
        expect_error(error, ShapeError)
        return
    if dtype != torch.float32:
        expect_error(error, DTypeError)
        return
    if kind == "nan" or label_shift or att_kind == "nan":
        expect_error(error, RangeError)
        return
    assert out is not None, error
    for curves in out.values():
        for name in curves.methods:
            values = torch.tensor(curves.mean(name))
            assert_finite(values, f"{which} curve")
            assert bool(((values >= 0) & (values <= 1)).all())


@FAST
@given(
    values=st.one_of(
        st.lists(
            st.one_of(st.floats(allow_nan=True), st.integers(-1, 2), st.just("a")), max_size=5
        ),
        st.just(0.5),
        st.just("0.5"),
    )
)
def test_check_fractions(values: object) -> None:
    out, error = outcome("checks", "arguments", lambda: check_fractions(values), ["fractions"])  # type: ignore[arg-type]
    if not isinstance(values, list):
        expect_error(error, DTypeError)
        return
    if not values:
        expect_error(error, RangeError)
        return
    for v in values:  # the first bad element decides the error
        if isinstance(v, str):
            expect_error(error, DTypeError)
            return
        if math.isnan(float(v)) or not 0 < float(v) < 1:
            expect_error(error, RangeError)
            return
    floats = [float(v) for v in values]  # type: ignore[arg-type]
    if len(set(floats)) != len(floats):
        expect_error(error, RangeError)
        return
    assert out == sorted(floats)


@FAST
@given(
    labels=st.lists(st.integers(-3, 6), max_size=5),
    dtype=st.sampled_from([torch.long, torch.int32, torch.uint8, torch.float32, torch.bool]),
    k=st.one_of(st.none(), st.integers(1, 5)),
)
def test_check_labels(labels: list[int], dtype: torch.dtype, k: int | None) -> None:
    if dtype in (torch.uint8, torch.bool):
        labels = [abs(v) for v in labels]
    t = torch.tensor(labels, dtype=dtype)
    out, error = outcome("checks", "labels", lambda: check_labels(t, "labels", k), ["labels"])
    if dtype in (torch.float32, torch.bool):
        expect_error(error, DTypeError)
        return
    values = t.long().tolist()
    if any(v < 0 or (k is not None and v >= k) for v in values):
        expect_error(error, RangeError)
        return
    assert out is t


@FAST
@given(
    shape=st.lists(st.integers(0, 3), max_size=4).map(tuple),
    pattern=st.lists(st.sampled_from(["B", "C", "H", "1", "2"]), max_size=4),
)
def test_check_shape(shape: tuple[int, ...], pattern: list[str]) -> None:
    x = torch.zeros(shape)
    out, error = outcome("checks", "shape", lambda: check_shape(x, " ".join(pattern), "x"), ["x"])
    ok = len(shape) == len(pattern)
    bound: dict[str, int] = {}
    for token, size in zip(pattern, shape, strict=False):
        if token.isdigit():
            ok = ok and size == int(token)
        elif token in bound:
            ok = ok and bound[token] == size
        else:
            bound[token] = size
    if not ok:
        expect_error(error, ShapeError)
        return
    assert out == bound
