"""Fuzz: the supersmoother and ACE (functional/ace.py), at every scale and in float32."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import (
    FAST,
    SLOW,
    Spec,
    any_rank,
    assert_finite,
    close,
    expect_error,
    make,
    mostly,
    outcome,
    seeds,
    shapes,
    specs,
)
from xai_feedback.errors import DTypeError, RangeError, ShapeError
from xai_feedback.functional import ace, fixed_span_smooth, supersmooth

scales = st.sampled_from([1.0, 1e-30, 1e-10, 1e10, 1e30])


@FAST
@given(
    x=specs(mostly(shapes((3, 12)), shapes((1, 2), (3, 12)), any_rank(3, 6)), bad_dtype=0.1),
    y_same=st.booleans(),
    scale=scales,
    slope=st.floats(-3, 3),
    seed=seeds,
)
def test_supersmooth(x: Spec, y_same: bool, scale: float, slope: float, seed: int) -> None:
    xs = make(x, seed)
    if x.finite and xs.is_floating_point():
        xs = xs * scale if abs(scale) < 1 or x.kind not in ("huge",) else xs
    ys = slope * xs + 0.5 if y_same and xs.is_floating_point() else make(x, seed + 1)
    if not y_same and xs.dim() > 0:
        ys = ys[..., :-1] if xs.shape[-1] > 1 else ys
    out, error = outcome(
        "ace/supersmooth", x.label(), lambda: supersmooth(xs, ys), ["x", "y", "observations"]
    )
    if not x.dtype.is_floating_point:
        expect_error(error, DTypeError)
        return
    if xs.shape != ys.shape or xs.dim() == 0:
        expect_error(error, ShapeError)
        return
    if xs.shape[-1] < 5:
        expect_error(error, RangeError)
        return
    if not x.finite or not bool(torch.isfinite(ys).all()):
        expect_error(error, RangeError)
        return
    if error is not None:  # only an overflow of the squared sums may be refused
        assert isinstance(error, RangeError) and "exceed" in str(error)
        return
    assert out is not None
    assert out.shape == xs.shape and out.dtype == xs.dtype
    assert_finite(out, "smooth")
    if y_same:
        # running lines reproduce a line exactly (tied x share equal y)
        span = (float(ys.abs().max()) if ys.numel() else 0.0) or 1.0  # (0, n): no cells
        close(out / span, ys / span, rtol=1e-3, atol=1e-3)
    # float32 is computed in float64 (issue 14: it used to give NaN on small scales)
    if xs.dtype == torch.float32:
        close(out, supersmooth(xs.double(), ys.double()).float(), rtol=1e-5, atol=1e-30)


@FAST
@given(
    x=specs(shapes((1, 2), (3, 10)), kinds=("uniform", "normal", "nan")),
    span=st.floats(-0.5, 1.5),
    seed=seeds,
)
def test_fixed_span_smooth(x: Spec, span: float, seed: int) -> None:
    xs = make(x, seed).sort(dim=-1).values
    ys = 2 * xs - 1
    out, error = outcome(
        "ace/supersmooth",
        x.label(),
        lambda: fixed_span_smooth(xs, ys, span),
        ["x", "y", "span", "observations"],
    )
    if not 0 < span <= 1 or xs.shape[-1] < 5 or not x.finite:
        expect_error(error, RangeError)
        return
    assert out is not None, error
    close(out, ys, rtol=1e-4, atol=1e-5)


@SLOW
@given(
    x=specs(mostly(shapes((0, 2), (4, 30), (1, 2)), any_rank(3, 6)), bad_dtype=0.1),
    scale=scales,
    dtype=st.sampled_from([None, torch.float32, torch.float64]),
    constant_y=st.booleans(),
    seed=seeds,
)
def test_ace(x: Spec, scale: float, dtype: torch.dtype | None, constant_y: bool, seed: int) -> None:
    xs = make(x, seed)
    if xs.is_floating_point() and x.kind not in ("huge", "tiny"):
        xs = xs * scale
    if xs.dim() == 3 and xs.is_floating_point():
        g = torch.Generator().manual_seed(seed)
        ys = xs.double().sum(-1) + 0.1 * scale * torch.rand(
            xs.shape[:2], generator=g, dtype=torch.float64
        )
        ys = ys.to(xs.dtype)
        if constant_y:
            ys = torch.ones_like(ys)
    else:
        ys = torch.rand(xs.shape[:2] if xs.dim() >= 2 else (1, 1))
    result, error = outcome(
        "ace/supersmooth",
        x.label(),
        lambda: ace(xs, ys, dtype=dtype, maxit=5),
        ["x", "y", "observations"],
    )
    if xs.dim() != 3:
        expect_error(error, ShapeError, DTypeError)
        return
    if not x.dtype.is_floating_point:
        expect_error(error, DTypeError)
        return
    if xs.shape[1] < 5 or (not x.finite and xs.numel()):
        expect_error(error, RangeError)
        return
    if (
        xs.shape[0]
        and (constant_y or x.kind in ("zeros", "constant"))
        and bool((ys == ys[:, :1]).all(1).any())
    ):
        expect_error(error, RangeError)
        return
    if error is not None:  # only an overflow of the squared sums may be refused
        assert isinstance(error, RangeError) and "exceed" in str(error), error
        return
    assert result is not None
    out_dtype = xs.dtype if dtype is None else dtype
    p, n, k = xs.shape
    assert result.x_transforms.shape == (p, n, k) and result.x_transforms.dtype == out_dtype
    assert result.correlation.shape == (p,) and result.correlation.dtype == out_dtype
    for tensor in (result.x_transforms, result.y_transform, result.correlation, result.rsq):
        assert_finite(tensor, "ACE result")
    assert bool((result.correlation.abs() <= 1 + 1e-6).all())
    if p and out_dtype == torch.float32:
        reference = ace(xs.double(), ys.double(), maxit=5)
        close(result.correlation, reference.correlation, rtol=1e-4, atol=1e-5)
