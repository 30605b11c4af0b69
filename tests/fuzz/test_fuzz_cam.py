"""Fuzz: CAM kernels, normalization and resizing (functional/cam.py).

Arithmetic kernels propagate NaN/Inf (they run inside training steps, where a check would
synchronise the device; the penalties check their maps); finite inputs must give finite maps
equal to a float64 reference, unless the exact result itself exceeds the dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import (
    FAST,
    KINDS,
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
from xai_feedback.functional import (
    cam_from_head,
    grad_cam,
    grad_cam_pp,
    hires_cam,
    normalize_maps,
    resize_maps,
)

ACTS = shapes((0, 3), (1, 3), (1, 4), (1, 4))


def _reference(method: str, a: torch.Tensor, g: torch.Tensor, relu: bool) -> torch.Tensor:
    a, g = a.double(), g.double()
    if method == "grad_cam":
        maps = (g.mean(dim=(2, 3), keepdim=True) * a).sum(1)
    elif method == "hires_cam":
        maps = (g * a).sum(1)
    else:  # the paper's closed form: alpha = g^2 / (2 g^2 + sum(A) g^3), 0 where g = 0
        total = a.sum(dim=(2, 3), keepdim=True)
        den = 2 * g**2 + total * g**3
        alpha = torch.where(g != 0, g**2 / torch.where(den != 0, den, 1.0), 0.0)
        maps = ((alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True) * a).sum(1)
    return F.relu(maps) if relu else maps


@FAST
@given(
    method=st.sampled_from(["grad_cam", "hires_cam", "grad_cam_pp"]),
    acts=specs(mostly(ACTS, ACTS, any_rank()), bad_dtype=0.1, meta=0.05),
    same_shape=st.booleans().map(lambda b: b or False),
    other=ACTS,
    relu=st.booleans(),
    seed=seeds,
)
def test_gradient_cam_kernels(
    method: str, acts: Spec, same_shape: bool, other: tuple[int, ...], relu: bool, seed: int
) -> None:
    kernel = {"grad_cam": grad_cam, "hires_cam": hires_cam, "grad_cam_pp": grad_cam_pp}[method]
    grads = Spec(acts.shape if same_shape else other, acts.dtype, acts.kind, acts.device)
    a, g = make(acts, seed, budget=3), make(grads, seed + 1, budget=3)
    label = acts.label() if acts.shape == grads.shape or len(acts.shape) != 4 else "shape mismatch"
    maps, error = outcome("cam kernels", label, lambda: kernel(a, g, relu=relu), ["acts", "grads"])
    if len(acts.shape) != 4 or acts.shape != grads.shape:
        expect_error(error, ShapeError, DTypeError)
        return
    if not acts.dtype.is_floating_point:
        expect_error(error, DTypeError)
        return
    assert maps is not None, error
    b, _, h, w = acts.shape
    assert maps.shape == (b, h, w) and maps.dtype == acts.dtype and maps.device == a.device
    if acts.device == "meta" or a.numel() == 0:
        return
    if not acts.finite:
        return  # NaN/Inf propagate (documented): no finite answer is claimed
    ref = _reference(method, a, g, relu)
    if method == "grad_cam_pp":
        den = 2 + a.double().sum(dim=(2, 3), keepdim=True) * F.relu(g.double())
        if bool((den.abs() < 1e-3).any()):
            return  # near the kernel's eps guard the two forms legitimately differ
    limit = torch.finfo(acts.dtype).max
    if bool((ref.abs() < limit / 4).all()):
        assert_finite(maps, method)
        scale = max(float((g.double().abs() * a.double().abs()).sum(1).max()), 1e-300)
        if method == "grad_cam_pp":
            scale = max(float(ref.abs().max()), 1e-300)
        close(maps.double() / scale, ref / scale, rtol=1e-4, atol=1e-5)


@FAST
@given(
    acts=specs(mostly(ACTS, any_rank()), kinds=KINDS, bad_dtype=0.1),
    k=st.integers(1, 4),
    target=st.one_of(st.none(), st.lists(st.integers(-2, 5), min_size=0, max_size=4)),
    float_target=st.booleans(),
    seed=seeds,
)
def test_cam_from_head(
    acts: Spec, k: int, target: list[int] | None, float_target: bool, seed: int
) -> None:
    a = make(acts, seed, budget=3)
    c = acts.shape[1] if len(acts.shape) > 1 else 1
    weight = torch.rand(k, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    weight = weight.to(acts.dtype) if acts.dtype.is_floating_point else weight
    t = None if target is None else torch.tensor(target, dtype=torch.long)
    if t is not None and float_target:
        t = t.double()
    bad_target = t is not None and (
        float_target
        or len(acts.shape) != 4
        or len(target or []) != acts.shape[0]
        or any(v < 0 or v >= k for v in target or [])
    )
    label = "target out of range/length/dtype" if bad_target else acts.label()
    maps, error = outcome(
        "cam kernels", label, lambda: cam_from_head(a, weight, t), ["acts", "weight", "target"]
    )
    if len(acts.shape) != 4 or not acts.dtype.is_floating_point or bad_target:
        expect_error(error, ShapeError, DTypeError, RangeError)
        return
    assert maps is not None, error
    if not acts.finite:
        return
    b = acts.shape[0]
    ref = torch.einsum("kc,bchw->bkhw", weight.double(), a.double())
    if t is not None:
        ref = ref[torch.arange(b), t] if b else ref[:, 0]
    assert maps.shape == ref.shape
    assert_finite(maps, "cam")
    scale = max(float(ref.abs().max()) if ref.numel() else 1.0, 1e-300)
    close(maps.double() / scale, ref / scale, rtol=1e-4, atol=1e-5)


def _normalize_reference(m: torch.Tensor, mode: str, eps: float) -> torch.Tensor:
    flat = m.double().flatten(-2)
    if mode == "none" or flat.shape[-1] == 0:  # no cells: nothing to normalize
        out = flat
    elif mode == "max":
        out = flat / (flat.abs().amax(-1, keepdim=True) + eps)
    elif mode == "sum":
        out = flat / (flat.abs().sum(-1, keepdim=True) + eps)
    elif mode == "energy":
        out = flat / torch.sqrt(flat.pow(2).sum(-1, keepdim=True) + eps)
    else:
        low = flat.amin(-1, keepdim=True)
        out = (flat - low) / (flat.amax(-1, keepdim=True) - low + eps)
    return out.view(m.shape)


@FAST
@given(
    maps=specs(
        mostly(shapes((0, 3), (1, 4), (1, 4)), shapes((1, 2), (1, 3), (1, 4), (1, 4)), any_rank()),
        dtypes=(torch.float32,),
        bad_dtype=0.1,
    ),
    mode=st.one_of(st.sampled_from(["none", "max", "sum", "minmax", "energy"]), st.just("l2")),
    seed=seeds,
)
def test_normalize_maps(maps: Spec, mode: str, seed: int) -> None:
    # float32 near its limit (budget 1): the float64 reference cannot overflow
    m = make(maps, seed, budget=1)
    out, error = outcome(
        "normalize/resize", maps.label(), lambda: normalize_maps(m, mode), ["maps", "mode"]
    )
    if mode == "l2" or len(maps.shape) < 3 or not maps.dtype.is_floating_point:
        expect_error(error, RangeError, ShapeError, DTypeError)
        return
    assert out is not None, error
    assert out.shape == m.shape and out.dtype == m.dtype
    if not maps.finite:
        assert out.numel() == 0 or mode == "none" or not bool(torch.isfinite(out).all())
        return
    assert_finite(out, "normalized maps")
    close(out, _normalize_reference(m, mode, 1e-8), rtol=1e-4, atol=1e-6)
    if mode == "minmax" and out.numel():
        assert float(out.min()) >= 0 and float(out.max()) <= 1


@FAST
@given(
    maps=specs(mostly(shapes((0, 2), (0, 4), (0, 4)), any_rank()), bad_dtype=0.1),
    size=st.tuples(st.integers(-1, 6), st.integers(-1, 6)),
    mode=st.sampled_from(["bilinear", "nearest", "area", "bicubic"]),
    seed=seeds,
)
def test_resize_maps(maps: Spec, size: tuple[int, int], mode: str, seed: int) -> None:
    m = make(maps, seed)
    out, error = outcome(
        "normalize/resize",
        maps.label(),
        lambda: resize_maps(m, size, mode),
        ["maps", "size", "mode"],
    )
    bad = (
        mode == "bicubic"
        or len(maps.shape) not in (3, 4)
        or not maps.dtype.is_floating_point
        or min(size) < 1
        or 0 in maps.shape[-2:]
    )
    if bad:
        expect_error(error, RangeError, ShapeError, DTypeError)
        return
    assert out is not None, error
    assert out.shape == (*m.shape[:-2], *size) and out.dtype == m.dtype
    if maps.finite and out.numel():
        assert_finite(out, "resized maps")
        # every resize mode is a convex combination of the input's cells
        assert float(out.min()) >= float(m.min()) - 1e-5 * float(m.abs().max() + 1)
        assert float(out.max()) <= float(m.max()) + 1e-5 * float(m.abs().max() + 1)
