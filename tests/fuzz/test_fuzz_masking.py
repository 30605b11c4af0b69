"""Fuzz: masks, fills, imputation and blur (functional/masking.py, functional/imputation.py).

These kernels *select* pixels or spread values, so a NaN would be silent (it sorts first,
compares false, or leaks through a solve): non-finite inputs must be refused.
"""

from __future__ import annotations

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
from xai_feedback.errors import DTypeError, RangeError, ShapeError
from xai_feedback.functional import (
    blend,
    blur_images,
    fill_values,
    linear_imputation,
    noisy_linear_imputation,
    rank_mask,
    remove_pixels,
    threshold_mask,
    topk_mask,
)

MAPS = shapes((0, 3), (1, 5), (1, 5))
IMAGES = shapes((0, 2), (1, 2), (1, 6), (1, 6))
fractions = st.one_of(st.floats(0, 1), st.sampled_from([-0.1, 1.5, float("nan")]))


@FAST
@given(
    maps=specs(mostly(MAPS, MAPS, any_rank()), bad_dtype=0.1),
    fraction=fractions,
    largest=st.booleans(),
    seed=seeds,
)
def test_topk_mask_counts_exactly(maps: Spec, fraction: float, largest: bool, seed: int) -> None:
    m = make(maps, seed, budget=1)
    out, error = outcome(
        "masking",
        maps.label(),
        lambda: topk_mask(m, fraction, largest=largest),
        ["maps", "fraction"],
    )
    if len(maps.shape) != 3 or not maps.dtype.is_floating_point or not 0 <= fraction <= 1:
        expect_error(error, ShapeError, DTypeError, RangeError)
        return
    if not maps.finite and m.numel():
        expect_error(error, RangeError)
        return
    assert out is not None, error
    b, h, w = maps.shape
    k = round(fraction * h * w)
    assert out.dtype == torch.bool and out.shape == m.shape
    assert out.flatten(1).sum(1).tolist() == [k] * b
    # reference: every chosen value ranks at or above every other (below, for smallest)
    for i in range(b):
        chosen, rest = m[i][out[i]], m[i][~out[i]]
        if chosen.numel() and rest.numel():
            if largest:
                assert float(chosen.min()) >= float(rest.max())
            else:
                assert float(chosen.max()) <= float(rest.min())


@FAST
@given(
    att=specs(mostly(MAPS, shapes((0, 2), (1, 3), (1, 4), (1, 4)), any_rank()), bad_dtype=0.1),
    fraction=fractions,
    most=st.booleans(),
    squared=st.booleans(),
    threshold=st.floats(-0.5, 1.5),
    seed=seeds,
)
def test_rank_and_threshold_masks(
    att: Spec, fraction: float, most: bool, squared: bool, threshold: float, seed: int
) -> None:
    a = make(att, seed, budget=2)
    out, error = outcome(
        "masking",
        att.label(),
        lambda: rank_mask(a, fraction, most_relevant=most, squared=squared),
        ["attributions", "fraction"],
    )
    ok_shape = len(att.shape) in (3, 4)
    if not ok_shape or not att.dtype.is_floating_point or not 0 < fraction < 1:
        expect_error(error, ShapeError, DTypeError, RangeError)
    elif not att.finite and a.numel():
        expect_error(error, RangeError)
    else:
        assert out is not None, error
        h, w = att.shape[-2:]
        assert out.shape == (att.shape[0], h, w)
        assert out.flatten(1).sum(1).tolist() == [round(fraction * h * w)] * att.shape[0]
    out, error = outcome(
        "masking", att.label(), lambda: threshold_mask(a, threshold), ["maps", "threshold"]
    )
    if not att.dtype.is_floating_point or not 0 <= threshold <= 1:
        expect_error(error, DTypeError, RangeError)
    elif not att.finite and a.numel():
        expect_error(error, RangeError)
    else:
        assert out is not None, error
        assert torch.equal(out, a > threshold)


@FAST
@given(
    images=specs(mostly(IMAGES, IMAGES, any_rank()), bad_dtype=0.1),
    fill=st.sampled_from(
        ["zero", "mean", "max", "min", "dataset_mean", "blur", "linear", "noisy_linear", "median"]
    ),
    give_mean=st.booleans(),
    mask_kind=st.sampled_from(["random", "none", "all", "float"]),
    seed=seeds,
)
def test_remove_pixels(images: Spec, fill: str, give_mean: bool, mask_kind: str, seed: int) -> None:
    x = make(images, seed, budget=1)
    g = torch.Generator().manual_seed(seed)
    shape = (x.shape[0], *x.shape[2:]) if x.dim() == 4 else (1, 1, 1)
    mask = torch.rand(shape, generator=g) < 0.4
    if mask_kind == "none":
        mask[:] = False
    elif mask_kind == "all":
        mask[:] = True
    mean = torch.rand(x.shape[1] if x.dim() == 4 else 1, generator=g) if give_mean else None
    bad_mask = mask_kind == "float"
    m = mask.float() if bad_mask else mask
    out, error = outcome(
        "masking",
        images.label() if not bad_mask else "dtype float mask",
        lambda: remove_pixels(x, m, fill, dataset_mean=mean, generator=g),
        ["images", "mask", "fill", "dataset_mean", "every pixel"],
    )
    dims_ok = x.dim() == 4 and images.dtype.is_floating_point
    if not dims_ok or fill == "median" or bad_mask:
        expect_error(error, ShapeError, DTypeError, RangeError)
        return
    if not images.finite and x.numel():
        expect_error(error, RangeError)
        return
    if fill in ("mean", "max", "min") and x.shape[2] * x.shape[3] == 0:
        expect_error(error, ShapeError)
        return
    if fill == "dataset_mean" and mean is None:
        expect_error(error, ValueError)
        return
    if fill in ("linear", "noisy_linear") and x.numel() and bool(mask.flatten(1).all(1).any()):
        expect_error(error, RangeError)
        return
    assert out is not None, error
    assert out.shape == x.shape and out.dtype == x.dtype
    keep = ~mask.unsqueeze(1).expand_as(x)
    assert torch.equal(out[keep], x[keep])  # kept pixels untouched
    assert_finite(out, f"remove_pixels({fill})")
    if fill == "zero":
        assert bool((out[~keep] == 0).all())
    if fill == "linear" and x.numel() and bool(mask.any()):
        # float32 at any magnitude matches the float64 solve (relative to the image's scale)
        ref = linear_imputation(x.double(), mask)
        scale = x.double().abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-300)
        close(out / scale, ref / scale, rtol=1e-3, atol=1e-4)
    if fill == "linear" and x.numel():
        # maximum principle: imputed values are weighted means of known ones
        for b in range(x.shape[0]):
            known = x[b][keep[b]]
            if known.numel() and (~keep[b]).any():
                lo, hi = float(known.min()), float(known.max())
                span = max(hi - lo, abs(hi), abs(lo), 1e-30)
                assert float(out[b][~keep[b]].min()) >= lo - 1e-3 * span
                assert float(out[b][~keep[b]].max()) <= hi + 1e-3 * span


@FAST
@given(
    images=specs(mostly(IMAGES, IMAGES, any_rank()), bad_dtype=0.1),
    sigma=st.one_of(st.floats(0.1, 4.0), st.sampled_from([0.0, -1.0, float("inf")])),
    seed=seeds,
)
def test_blur_images_any_size(images: Spec, sigma: float, seed: int) -> None:
    x = make(images, seed, budget=1)
    out, error = outcome(
        "imputation/blur", images.label(), lambda: blur_images(x, sigma), ["images", "sigma"]
    )
    if x.dim() != 4 or not images.dtype.is_floating_point or not 0 < sigma < float("inf"):
        expect_error(error, ShapeError, DTypeError, RangeError)
        return
    if not images.finite and x.numel():
        expect_error(error, RangeError)
        return
    assert out is not None, error
    assert out.shape == x.shape and out.dtype == x.dtype
    assert_finite(out, "blur")
    if x.numel():
        # a convex combination of pixels: within the image's range
        tol = 1e-5 * float(x.abs().max() + 1e-30)
        assert float(out.min()) >= float(x.min()) - tol and float(out.max()) <= float(x.max()) + tol
        # reference: separable Gaussian with the same per-axis clipped radius
        full = int(3 * sigma + 0.999)
        rh, rw = min(full, x.shape[2] - 1), min(full, x.shape[3] - 1)

        def g1(r: int) -> torch.Tensor:
            t = torch.arange(-r, r + 1, dtype=torch.float64)
            k = torch.exp(-(t**2) / (2 * sigma**2))
            return k / k.sum()

        y = F.pad(x.double().flatten(0, 1).unsqueeze(1), (rw, rw, rh, rh), mode="reflect")
        y = F.conv2d(F.conv2d(y, g1(rw).view(1, 1, 1, -1)), g1(rh).view(1, 1, -1, 1))
        scale = float(x.double().abs().max()) or 1.0
        close(out / scale, y.view(x.shape) / scale, rtol=1e-4, atol=1e-5)


@FAST
@given(
    images=specs(mostly(IMAGES, any_rank()), bad_dtype=0.1),
    fill=st.sampled_from(["zero", "mean", "max", "min", "dataset_mean"]),
    strength=st.floats(-0.5, 1.5),
    seed=seeds,
)
def test_fill_values_and_blend(images: Spec, fill: str, strength: float, seed: int) -> None:
    x = make(images, seed, budget=1)
    mean = torch.full((x.shape[1] if x.dim() == 4 else 1,), 0.25)
    out, error = outcome(
        "masking",
        images.label(),
        lambda: fill_values(x, fill, mean),
        ["images", "fill", "dataset_mean"],
    )
    if x.dim() != 4 or not images.dtype.is_floating_point:
        expect_error(error, ShapeError, DTypeError)
        return
    if fill in ("mean", "max", "min") and x.shape[2] * x.shape[3] == 0:
        expect_error(error, ShapeError)
        return
    if not images.finite and x.numel() and fill != "zero" and fill != "dataset_mean":
        expect_error(error, RangeError)
        return
    if out is not None and images.finite and x.shape[0] and x.shape[2] * x.shape[3]:
        flat = x.flatten(2)
        ref = {
            "zero": torch.zeros_like(flat[..., 0]),
            "mean": flat.mean(2),
            "max": flat.amax(2),
            "min": flat.amin(2),
            "dataset_mean": mean.to(x.dtype).expand(x.shape[0], -1),
        }[fill]
        close(out[..., 0, 0], ref)
    maps = torch.rand(x.shape[0], *x.shape[2:]) if x.dim() == 4 else torch.rand(1)
    out, error = outcome(
        "masking",
        images.label(),
        lambda: blend(x, maps.to(x.dtype), strength),
        ["images", "maps", "strength"],
    )
    if not 0 <= strength <= 1:
        expect_error(error, RangeError)
    elif error is None and images.finite:
        assert out is not None
        close(out, (1 - strength * maps.to(x.dtype).unsqueeze(1)) * x)


@FAST
@given(
    images=specs(shapes((1, 2), (1, 2), (2, 6), (2, 6)), dtypes=(torch.float64,)),
    noise=st.one_of(st.floats(0, 1), st.sampled_from([-1.0, float("nan")])),
    seed=seeds,
)
def test_noisy_linear_imputation(images: Spec, noise: float, seed: int) -> None:
    x = make(images, seed)
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(x.shape[0], *x.shape[2:], generator=g) < 0.3
    mask.view(x.shape[0], -1)[:, 0] = False  # one pixel always kept
    out, error = outcome(
        "imputation/blur",
        images.label(),
        lambda: noisy_linear_imputation(x, mask, noise, generator=g),
        ["images", "noise", "mask"],
    )
    if not noise >= 0:
        expect_error(error, RangeError)
        return
    if not images.finite:
        expect_error(error, RangeError)
        return
    assert out is not None, error
    keep = ~mask.unsqueeze(1).expand_as(x)
    assert torch.equal(out[keep], x[keep])
    assert_finite(out)
    if noise == 0:
        assert torch.equal(out, linear_imputation(x, mask))
