"""Validation at the public boundary (issue 14, item 6): each case failed before it was checked.

Each test names the input class, the error it now gets, and checks that the message names the
argument; where the old behavior was a wrong answer, the right answer is checked too.
"""

from __future__ import annotations

import math

import pytest
import torch

from xai_feedback import DTypeError, RangeError, ShapeError, XAIFeedbackError
from xai_feedback._checks import (
    check_fractions,
    check_labels,
    check_model_input,
    check_nonempty,
)
from xai_feedback.attribution import attribute
from xai_feedback.data import ImageDataset, train_val_split
from xai_feedback.data.confounds import confounded_digits
from xai_feedback.data.digits import load_digits
from xai_feedback.functional import (
    ace,
    blur_images,
    cam_from_head,
    fill_values,
    fixed_span_smooth,
    input_gradient_penalty,
    linear_imputation,
    normalize_maps,
    rank_mask,
    remove_pixels,
    supersmooth,
    threshold_mask,
    topk_mask,
)
from xai_feedback.losses import CenterPenalty, MaskPenalty
from xai_feedback.models import GAPNet
from xai_feedback.pcace import capture
from xai_feedback.proxy import mine_hard_examples, proxy_images
from xai_feedback.training import accuracy, fit, predict

NAN = float("nan")


def _with_nan(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x.view(-1)[0] = NAN
    return x


# ----------------------------------------------------------------------------- the checks


def test_check_nonempty_labels_and_model_input() -> None:
    with pytest.raises(ShapeError, match=r"`images` must be a non-empty batch.*\(0, 3\)"):
        check_nonempty(torch.zeros(0, 3), "images")
    with pytest.raises(RangeError, match=r"`labels` must hold classes in \[0, 3\).*\[-1, 2\]"):
        check_labels(torch.tensor([-1, 2]), "labels", 3)
    with pytest.raises(RangeError, match=r"\[0, 3\).*\[0, 3\]"):
        check_labels(torch.tensor([0, 3]), "labels", 3)
    with pytest.raises(DTypeError, match="`labels` must hold integer"):
        check_labels(torch.tensor([0.0, 1.0]), "labels", 3)
    model = torch.nn.Linear(2, 1)
    with pytest.raises(DTypeError, match=r"`x` must have the model's dtype torch.float32.*float64"):
        check_model_input(model, torch.zeros(1, 2, dtype=torch.float64), "x")
    with pytest.raises(DTypeError, match=r"`x` must be on the model's device cpu.*meta"):
        check_model_input(model, torch.zeros(1, 2, device="meta"), "x")
    # a model without parameters takes anything floating
    assert check_model_input(torch.nn.Identity(), torch.zeros(1, dtype=torch.float64)).numel() == 1


def test_fractions_duplicates_are_refused_and_order_is_sorted() -> None:
    with pytest.raises(RangeError, match=r"`fractions` must be distinct, got \[0.5\]"):
        check_fractions([0.5, 0.2, 0.5])
    assert check_fractions([0.5, 0.1]) == [0.1, 0.5]
    with pytest.raises(DTypeError, match="`fractions` must be an iterable"):
        check_fractions(0.5)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ non-finite inputs


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda m: topk_mask(m, 0.25), "maps"),
        (lambda m: threshold_mask(m, 0.5), "maps"),
        (lambda m: rank_mask(m, 0.25), "attributions"),
        (lambda m: rank_mask(m.unsqueeze(1), 0.25), "attributions"),
    ],
)
def test_nan_maps_are_refused_by_selections(call, name) -> None:  # type: ignore[no-untyped-def]
    # before: NaN sorted first and silently took the top ranks (or selected nothing)
    with pytest.raises(RangeError, match=rf"`{name}` must be finite, got 1 NaN"):
        call(_with_nan(torch.rand(2, 4, 4)))


def test_nan_images_are_refused_by_fills_imputation_and_blur() -> None:
    images = _with_nan(torch.rand(1, 1, 4, 4))
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 1, 1] = True
    for call in (
        lambda: fill_values(images, "mean"),
        lambda: linear_imputation(images, mask),
        lambda: blur_images(images, 1.0),
        lambda: remove_pixels(images, mask, "zero"),
    ):
        with pytest.raises(RangeError, match="`images` must be finite"):
            call()


def test_supersmooth_and_ace_refuse_nan() -> None:
    x = torch.linspace(0, 1, 20, dtype=torch.float64)
    with pytest.raises(RangeError, match="`y` must be finite"):
        supersmooth(x, _with_nan(x))  # before: a finite, meaningless smooth
    with pytest.raises(RangeError, match="`x` must be finite"):
        fixed_span_smooth(_with_nan(x)[None], x[None], 0.2)
    with pytest.raises(RangeError, match="`x` must be finite"):
        ace(_with_nan(x).view(1, 20, 1), x[None])


def test_proxy_and_mining_refuse_nan() -> None:
    with pytest.raises(RangeError, match="`maps` must be finite"):
        proxy_images(torch.rand(2, 1, 4, 4), _with_nan(torch.rand(2, 4, 4)))
    with pytest.raises(RangeError, match="`images` must be finite"):
        proxy_images(_with_nan(torch.rand(2, 1, 4, 4)), torch.rand(2, 4, 4))
    with pytest.raises(RangeError, match="`logits` must be finite"):
        mine_hard_examples(_with_nan(torch.rand(3, 2)), torch.tensor([0, 1, 0]))


def test_dataset_refuses_nan_images_and_bad_labels() -> None:
    with pytest.raises(RangeError, match="`images` must be finite"):
        ImageDataset(_with_nan(torch.rand(2, 1, 4, 4)), torch.tensor([0, 1]))
    with pytest.raises(DTypeError, match="`labels` must hold integer"):
        ImageDataset(torch.rand(2, 1, 4, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(RangeError, match=r"`labels` must hold classes in \[0, inf\)"):
        ImageDataset(torch.rand(2, 1, 4, 4), torch.tensor([0, -1]))


def test_attribution_refuses_nan_images() -> None:
    model = GAPNet(width=2, generator=torch.Generator().manual_seed(0))
    images = _with_nan(torch.rand(2, 1, 8, 8))
    # before: saliency returned finite attributions for a NaN image (silently wrong)
    with pytest.raises(RangeError, match="`images` must be finite"):
        attribute(model, images)
    with pytest.raises(RangeError, match="`images` must be finite"):
        attribute(model, images, method="grad_cam", size=None, reduce="sum")
    with pytest.raises(RangeError, match="`images` must be finite"):
        capture(model, None, images)


# ------------------------------------------------------------------- ACE in float32, scales


@pytest.mark.parametrize("dtype", [None, torch.float32])
def test_ace_on_small_scale_float32_is_finite_and_matches_float64(dtype) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 40, 2, generator=g) * 1e-10
    y = x[..., 0] + 3e10 * x[..., 1] ** 2
    result = ace(x, y, dtype=dtype)  # before: correlation NaN (float32 window sums cancel)
    assert result.correlation.dtype == torch.float32
    reference = ace(x.double(), y.double())
    assert torch.isfinite(result.correlation).all()
    torch.testing.assert_close(result.correlation.double(), reference.correlation)
    assert result.x_transforms.dtype == torch.float32


def test_supersmooth_float32_small_scale_is_finite_and_matches_float64() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, generator=g) * 1e-20
    y = torch.sin(x * 1e21)
    smooth = supersmooth(x, y)  # before: NaN in float32
    assert smooth.dtype == torch.float32
    torch.testing.assert_close(smooth.double(), supersmooth(x.double(), y.double()))


def test_normalize_maps_extreme_magnitudes_keep_their_values() -> None:
    # before: (1e30)^2 overflowed in float32 and "energy"/"sum"/"minmax" maps became 0
    maps = torch.full((1, 4, 4), 1e30)
    torch.testing.assert_close(normalize_maps(maps, "energy"), torch.full((1, 4, 4), 0.25))
    torch.testing.assert_close(normalize_maps(maps, "sum"), torch.full((1, 4, 4), 1 / 16))
    ramp = torch.tensor([[[-3e38, 0.0, 3e38]]])
    torch.testing.assert_close(normalize_maps(ramp, "minmax"), torch.tensor([[[0.0, 0.5, 1.0]]]))
    small = torch.tensor([[[1.0, 2.0]]])
    torch.testing.assert_close(
        normalize_maps(small, "energy"), small / math.sqrt(5.0 + 1e-8), rtol=1e-6, atol=0
    )


# ------------------------------------------------------------ crashes with obscure errors


def test_blur_small_non_square_images() -> None:
    # before: RuntimeError "Padding size should be less than the corresponding input dimension"
    x = torch.rand(2, 1, 3, 10, generator=torch.Generator().manual_seed(0))
    out = blur_images(x, 2.0)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # a constant image stays constant
    torch.testing.assert_close(
        blur_images(torch.full((1, 1, 2, 9), 0.5), 3.0), torch.full((1, 1, 2, 9), 0.5)
    )
    # the blur along W equals a separable 1-D reference with the same clipped radius
    sigma, radius = 1.0, 3
    grid = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(grid**2) / (2 * sigma**2))
    g = g / g.sum()
    x1 = torch.rand(1, 1, 1, 12, dtype=torch.float64)
    padded = torch.nn.functional.pad(x1, (radius, radius, 0, 0), mode="reflect")[0, 0, 0]
    expected = torch.stack([(padded[i : i + 2 * radius + 1] * g).sum() for i in range(12)])
    torch.testing.assert_close(blur_images(x1, sigma)[0, 0, 0], expected)


def test_negative_or_large_targets_are_refused() -> None:
    acts, weight = torch.rand(2, 3, 4, 4), torch.rand(5, 3)
    # before: target -1 silently gave the last class's map
    with pytest.raises(RangeError, match=r"`target` must hold classes in \[0, 5\)"):
        cam_from_head(acts, weight, torch.tensor([-1, 0]))
    with pytest.raises(RangeError, match=r"`target`.*\[0, 7\]"):  # before: IndexError
        cam_from_head(acts, weight, torch.tensor([7, 0]))
    with pytest.raises(DTypeError, match="`target` must hold integer"):
        cam_from_head(acts, weight, torch.tensor([0.0, 1.0]))
    maps = torch.rand(2, 3, 4, 4)
    with pytest.raises(RangeError, match=r"`target` must hold classes in \[0, 3\)"):
        CenterPenalty(classes="target")(maps, target=torch.tensor([-1, 0]))
    with pytest.raises(RangeError, match="`target`"):
        MaskPenalty(classes="target")(
            maps, masks=torch.ones(2, 4, 4, dtype=torch.bool), target=torch.tensor([0, 3])
        )


def test_input_gradient_penalty_error_is_in_the_hierarchy() -> None:
    logits, images = torch.rand(2, 3), torch.rand(2, 1, 4, 4)
    with pytest.raises(RangeError, match="`images` must require grad") as info:
        input_gradient_penalty(logits, images, torch.ones(2, 4, 4))
    assert isinstance(info.value, XAIFeedbackError) and isinstance(info.value, ValueError)


def test_float64_images_into_float32_models() -> None:
    model = GAPNet(width=2, generator=torch.Generator().manual_seed(0))
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    for call in (
        lambda: model(x),  # before: RuntimeError "expected scalar type Double but found Float"
        lambda: attribute(model, x),
        lambda: attribute(model, x, method="grad_cam", size=None, reduce="sum"),
        lambda: predict(model, x),
        lambda: capture(model, None, x),
    ):
        with pytest.raises(DTypeError, match=r"`images` must have the model's dtype torch.float32"):
            call()
    with pytest.raises(DTypeError, match=r"`data.images` must have the model's dtype"):
        fit(model, ImageDataset(x, torch.tensor([0, 1])), epochs=1)


def test_fit_and_accuracy_on_zero_examples() -> None:
    model = GAPNet(width=2)
    empty = ImageDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    # before: ValueError from OneCycleLR ("steps_per_epoch ... 0") and a NaN accuracy
    with pytest.raises(ShapeError, match="`data` must be a non-empty dataset"):
        fit(model, empty, epochs=1)
    with pytest.raises(ShapeError, match="`data` must be a non-empty dataset"):
        accuracy(model, empty)
    with pytest.raises(ShapeError, match="`images` must be a non-empty batch"):
        predict(model, empty.images)  # before: torch.cat of an empty list


def test_fit_refuses_labels_beyond_the_model_and_keeps_flags_and_weights() -> None:
    model = GAPNet(width=2, num_classes=3, generator=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in model.parameters()]
    data = ImageDataset(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(RangeError, match=r"`data.labels` must hold classes in \[0, 3\).*label 3"):
        fit(model, data, epochs=1)  # before: IndexError "Target 3 is out of bounds"
    assert model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_data_helpers_refuse_bad_arguments() -> None:
    with pytest.raises(DTypeError, match=r"`dtype` must be a torch\.dtype"):
        load_digits("train", dtype="float32")  # type: ignore[arg-type]
    with pytest.raises(RangeError, match="`size` must be <= 28"):
        confounded_digits("train", "frame", size=40)
    tiny = ImageDataset(torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(RangeError, match=r"`dataset` .*cannot be split stratified"):
        train_val_split(tiny, 0.5)  # before: sklearn's ValueError


@pytest.mark.parametrize("scale", [1e37, 1e-20, 1e-37])
def test_linear_imputation_float32_at_extreme_scales_matches_float64(scale: float) -> None:
    # before: squared residuals overflowed/underflowed, CG stopped early: 50-70 % off, silently
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 1, 6, 6, generator=g) - 0.5) * scale
    mask = torch.rand(2, 6, 6, generator=g) < 0.5
    out = linear_imputation(x, mask).double()
    ref = linear_imputation(x.double(), mask)
    torch.testing.assert_close(out / scale, ref / scale, rtol=1e-4, atol=1e-5)


def test_one_image_with_a_1x1_map_in_training_mode() -> None:
    # before: ValueError "Expected more than 1 value per channel when training" from BatchNorm
    model = GAPNet(width=1, depth=2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ShapeError, match=r"`images` of shape \(1, 1, 2, 2\).*training mode"):
        model(torch.rand(1, 1, 2, 2))
    assert model(torch.rand(2, 1, 2, 2)).shape == (2, 10)  # two images are fine
    model.eval()
    assert torch.isfinite(model(torch.rand(1, 1, 2, 2))).all()  # and eval mode


def test_extreme_single_cell_maps_and_mean_fills_stay_finite() -> None:
    # minmax of one huge cell is 0 (eps / peak underflows); a mean of 1e37s does not overflow
    assert torch.equal(normalize_maps(torch.tensor([[[-1.9e37]]]), "minmax"), torch.zeros(1, 1, 1))
    x = torch.full((1, 1, 4, 4), 3e37)
    torch.testing.assert_close(fill_values(x, "mean").flatten(), torch.tensor([3e37]))


def test_fill_values_without_pixels_and_imputation_of_a_removed_image() -> None:
    # before: IndexError / RuntimeError from amax over no pixels; a message without "got"
    with pytest.raises(ShapeError, match=r"`images` must have at least one pixel.*\(1, 1, 0, 3\)"):
        fill_values(torch.zeros(1, 1, 0, 3), "max")
    with pytest.raises(
        RangeError, match=r"`mask` must keep.*every pixel removed in image\(s\) \[1\]"
    ):
        linear_imputation(
            torch.rand(2, 1, 2, 2), torch.tensor([[[0, 1], [1, 1]], [[1, 1], [1, 1]]]).bool()
        )


# ---------------------------------------------------------------- evaluation (after h-eval)


def _eval_setup() -> tuple[GAPNet, torch.Tensor, torch.Tensor]:
    model = GAPNet(width=2, generator=torch.Generator().manual_seed(0)).eval()
    return model, torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])


def test_road_and_selectivity_refuse_empty_nan_and_bad_target() -> None:
    from xai_feedback.evaluation import road, selectivity

    model, x, y = _eval_setup()
    nan = _with_nan(x)
    # before: ZeroDivisionError (road) / curves of nothing (selectivity)
    with pytest.raises(ShapeError, match="`images` must be a non-empty batch"):
        road(model, x[:0], y[:0], {"a": x[:0]}, fractions=[0.5])
    with pytest.raises(ShapeError, match="`images` must be a non-empty batch"):
        selectivity(model, x[:0], y[:0], {"a": lambda i, y: i}, patch=4)
    # before: RuntimeError "index 12 is out of bounds" / "index -1 is out of bounds"
    with pytest.raises(RangeError, match=r"`target` must hold classes in \[0, 10\).*12"):
        road(model, x, torch.tensor([0, 1, 2, 12]), {"a": x}, fractions=[0.5])
    with pytest.raises(RangeError, match=r"`target`.*\[-1, 2\]"):
        selectivity(model, x, torch.tensor([0, 1, 2, -1]), {"a": lambda i, y: i}, patch=4)
    # NaN attributions are named by their method
    with pytest.raises(RangeError, match=r"`methods\['a'\] attributions` must be finite"):
        road(model, x, y, {"a": nan}, fractions=[0.5])
    with pytest.raises(RangeError, match=r"`methods\['a'\] attributions` must be finite"):
        selectivity(model, x, y, {"a": lambda i, y: nan}, patch=4)
    with pytest.raises(RangeError, match="`images` must be finite"):
        road(model, nan, y, {"a": x}, fractions=[0.5])
    with pytest.raises(RangeError, match=r"`fractions` must be distinct, got \[0.5\]"):
        road(model, x, y, {"a": x}, fractions=[0.5, 0.2, 0.5])  # before: torch.cat error
    with pytest.raises(DTypeError, match="`images` must have the model's dtype"):
        road(model, x.double(), y, {"a": x}, fractions=[0.5])


def test_retrain_sweeps_refuse_empty_data_and_duplicate_fractions() -> None:
    from xai_feedback.evaluation import ROAR

    data = ImageDataset(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]))
    empty = data.subset(torch.zeros(4, dtype=torch.bool))
    sweep = ROAR(lambda d, g: GAPNet(width=1), {"a": data.images}, fractions=[0.5], progress=False)
    with pytest.raises(ShapeError, match="`train` must be a non-empty dataset"):
        sweep.run(empty, data)
    with pytest.raises(RangeError, match="`fractions` must be distinct"):
        ROAR(lambda d, g: GAPNet(width=1), {"a": data.images}, fractions=[0.5, 0.5])


def test_model_input_dtype_may_differ_under_autocast() -> None:
    model = GAPNet(width=1, depth=2, generator=torch.Generator().manual_seed(0)).eval()
    x = torch.rand(2, 1, 8, 8, dtype=torch.bfloat16)
    with pytest.raises(DTypeError, match="model's dtype"):
        model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).shape == (2, 10)
