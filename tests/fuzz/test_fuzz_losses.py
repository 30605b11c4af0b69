"""Fuzz: kernels, penalties and loss modules (functional kernels and penalties, losses.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import (
    FAST,
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
from xai_feedback.errors import DTypeError, MissingInputError, RangeError, ShapeError
from xai_feedback.functional import (
    center_penalty,
    center_weight,
    input_gradient_penalty,
    mask_penalty,
    masks_to_maps,
)
from xai_feedback.losses import (
    CenterPenalty,
    ConstantSchedule,
    MaskPenalty,
    PhaseSchedule,
    RampSchedule,
)

numbers = st.one_of(
    st.floats(-2, 3), st.sampled_from([0.0, float("nan"), float("inf")]), st.integers(-2, 3)
)


@FAST
@given(
    h=st.integers(-1, 7),
    w=st.integers(-1, 7),
    sigma=numbers,
    shape=st.sampled_from(["gaussian", "flat", "box"]),
    radius=numbers,
    dtype=st.sampled_from([torch.float32, torch.float64, torch.int64]),
)
def test_center_weight(
    h: int, w: int, sigma: float, shape: str, radius: float, dtype: torch.dtype
) -> None:
    call = lambda: center_weight(h, w, sigma, shape=shape, radius=radius, dtype=dtype)  # noqa: E731
    out, error = outcome(
        "penalties/losses", "arguments", call, ["h", "w", "sigma", "shape", "radius", "dtype"]
    )
    bad = (
        h < 1
        or w < 1
        or shape == "box"
        or dtype == torch.int64
        or not (isinstance(sigma, int | float) and math.isfinite(sigma) and sigma > 0)
        or not (math.isfinite(radius) and 0 <= radius <= 1)
    )
    if bad:
        expect_error(error, RangeError, DTypeError)
        return
    assert out is not None, error
    assert out.shape == (h, w) and out.dtype == dtype
    assert_finite(out)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    if h % 2 and w % 2:
        assert float(out[h // 2, w // 2]) == 0.0  # zero at the center
    # symmetric under flips
    close(out, out.flip(0))
    close(out, out.flip(1))


MAPS = mostly(shapes((0, 3), (1, 4), (1, 4)), shapes((1, 2), (1, 3), (1, 4), (1, 4)), any_rank())


@FAST
@given(maps=specs(MAPS, bad_dtype=0.1), seed=seeds, mask_hw=shapes((1, 8), (1, 8)))
def test_center_and_mask_penalty(maps: Spec, seed: int, mask_hw: tuple[int, int]) -> None:
    m = make(maps, seed, budget=4)
    hw = m.shape[-2:] if m.dim() >= 2 else (1, 1)
    weight = center_weight(max(hw[0], 1), max(hw[1], 1), 0.5, dtype=torch.float64)
    if maps.dtype.is_floating_point:
        weight = weight.to(maps.dtype)
    out, error = outcome(
        "penalties/losses", maps.label(), lambda: center_penalty(m, weight), ["maps", "weight"]
    )
    if m.dim() not in (3, 4) or not maps.dtype.is_floating_point or 0 in hw:
        expect_error(error, ShapeError, DTypeError)
    else:
        assert out is not None, error
        if maps.finite and m.numel():
            ref = (weight.double() * m.double()).pow(2).mean()
            assert_finite(out, "center penalty")
            close(out, ref, rtol=1e-4, atol=1e-30)
    b = m.shape[0] if m.dim() else 1
    masks = torch.rand(b, *mask_hw, generator=torch.Generator().manual_seed(seed)) < 0.5
    out, error = outcome(
        "penalties/losses", maps.label(), lambda: mask_penalty(m, masks), ["maps", "masks"]
    )
    if m.dim() not in (3, 4) or not maps.dtype.is_floating_point or 0 in hw:
        expect_error(error, ShapeError, DTypeError)
        return
    assert out is not None, error
    if maps.finite and m.numel():
        cover = F.adaptive_avg_pool2d(masks.double().unsqueeze(1), tuple(hw))
        cover = cover if m.dim() == 4 else cover.squeeze(1)
        close(out, (cover * m.double()).pow(2).mean(), rtol=1e-4, atol=1e-30)


@FAST
@given(
    masks=specs(
        mostly(shapes((0, 2), (1, 6), (1, 6)), any_rank()),
        dtypes=(torch.float32,),
        bad_dtype=0.5,
    ),
    size=st.tuples(st.integers(-1, 4), st.integers(-1, 4)),
    seed=seeds,
)
def test_masks_to_maps(masks: Spec, size: tuple[int, int], seed: int) -> None:
    m = make(masks, seed)
    out, error = outcome(
        "penalties/losses", masks.label(), lambda: masks_to_maps(m, size), ["masks", "size"]
    )
    if m.dim() != 3 or min(size) < 1 or 0 in m.shape[1:]:
        expect_error(error, ShapeError, RangeError, DTypeError)
        return
    if m.device.type != "meta" and not bool(((m >= 0) & (m <= 1)).all()):
        expect_error(error, RangeError)  # masks must be boolean or in [0, 1] (check_masks)
        return
    assert out is not None, error
    assert out.shape == (m.shape[0], *size)
    if masks.dtype == torch.bool and out.numel():
        assert float(out.min()) >= 0 and float(out.max()) <= 1


@FAST
@given(
    b=st.integers(0, 3),
    k=st.integers(1, 4),
    classes=st.sampled_from(["all", "target"]),
    signed=st.booleans(),
    normalize=st.sampled_from(["none", "max", "sum", "minmax", "energy"]),
    target=st.one_of(st.none(), st.lists(st.integers(-2, 5), min_size=0, max_size=3)),
    kind=st.sampled_from(["uniform", "normal", "huge", "nan"]),
    masked=st.booleans(),
    seed=seeds,
)
def test_penalty_modules(
    b: int,
    k: int,
    classes: str,
    signed: bool,
    normalize: str,
    target: list[int] | None,
    kind: str,
    masked: bool,
    seed: int,
) -> None:
    maps = make(Spec((b, k, 4, 4), torch.float32, kind), seed, budget=4).requires_grad_()
    t = None if target is None else torch.tensor(target, dtype=torch.long)
    masks = torch.zeros(b, 8, 8, dtype=torch.bool)
    masks[:, :2] = True
    module = (
        MaskPenalty(classes=classes, signed=signed, normalize=normalize)
        if masked
        else CenterPenalty(classes=classes, signed=signed, normalize=normalize)
    )
    call = lambda: module(maps, target=t, masks=masks if masked else None)  # noqa: E731
    needs_target = classes == "target"
    bad_target = needs_target and (
        t is None or len(target or []) != b or any(v < 0 or v >= k for v in target or [])
    )
    label = (
        "target out of range/length"
        if bad_target and t is not None
        else Spec((b,), torch.float32, kind).label()
    )
    out, error = outcome("penalties/losses", label, call, ["maps", "target"])
    if kind == "nan" and b:
        expect_error(error, RangeError)
        return
    if bad_target and t is None:
        expect_error(error, MissingInputError)
        return
    if bad_target:
        expect_error(error, RangeError, ShapeError)
        return
    assert out is not None, error
    assert out.dim() == 0
    if b:
        assert_finite(out, "penalty")
        assert float(out.detach()) >= 0
        (grad,) = torch.autograd.grad(out, maps)
        assert_finite(grad, "penalty gradient")


@FAST
@given(
    b=st.integers(0, 3),
    requires=st.booleans(),
    mask_b=st.integers(0, 3),
    kind=st.sampled_from(["uniform", "huge", "nan"]),
    seed=seeds,
)
def test_input_gradient_penalty(b: int, requires: bool, mask_b: int, kind: str, seed: int) -> None:
    images = make(Spec((b, 1, 3, 3), torch.float64, kind), seed, budget=8).requires_grad_(requires)
    linear = torch.nn.Linear(9, 2).double()
    logits = linear(images.flatten(1))
    masks = torch.ones(mask_b, 3, 3)
    out, error = outcome(
        "penalties/losses",
        "requires_grad off" if not requires else "valid",
        lambda: input_gradient_penalty(logits, images, masks),
        ["images", "logits", "masks"],
    )
    if mask_b != b:
        expect_error(error, ShapeError)
        return
    if not requires:
        expect_error(error, RangeError)
        return
    assert out is not None, error
    if kind != "nan" and b:
        assert_finite(out)
        assert float(out.detach()) >= 0


@FAST
@given(
    lam=numbers,
    phases=st.lists(st.tuples(st.integers(-1, 3), numbers, numbers), max_size=3),
    start=st.integers(-1, 3),
    end=st.integers(-1, 4),
    epoch=st.integers(0, 8),
)
def test_schedules(
    lam: float, phases: list[tuple[int, float, float]], start: int, end: int, epoch: int
) -> None:
    def ok(v: float) -> bool:
        return math.isfinite(v) and v >= 0

    schedule, error = outcome(
        "penalties/losses", "arguments", lambda: ConstantSchedule(lam), ["lam"]
    )
    if not ok(lam):
        expect_error(error, RangeError)
    else:
        assert schedule is not None and schedule.weights(epoch, 9) == (1.0, float(lam))
    phase, error = outcome(
        "penalties/losses", "arguments", lambda: PhaseSchedule(phases), ["phases"]
    )
    if not phases or any(e < 1 or not ok(c) or not ok(p) for e, c, p in phases):
        expect_error(error, RangeError)
    else:
        assert phase is not None
        ce, pen = phase.weights(epoch, 9)
        assert (ce, pen) in [(float(c), float(p)) for _, c, p in phases]
    ramp, error = outcome(
        "penalties/losses",
        "arguments",
        lambda: RampSchedule(lam, start, end),
        ["lam", "start", "end"],
    )
    if not ok(lam) or start < 0 or end < start + 1:
        expect_error(error, RangeError)
    else:
        assert ramp is not None
        ce, pen = ramp.weights(epoch, 9)
        assert ce == 1.0 and 0 <= pen <= float(lam)
