"""Counterexample augmentation: values, shapes, randomness and training use."""

from __future__ import annotations

import pytest
import torch

from xai_feedback.counterexamples import Counterexamples, counterexamples, region_range
from xai_feedback.errors import (
    DTypeError,
    MissingInputError,
    RangeError,
    ShapeError,
    XAIFeedbackError,
)
from xai_feedback.functional import center_weight, periphery_mask
from xai_feedback.objectives import counterexample_objective
from xai_feedback.training import Batch


def _data(b: int = 3, c: int = 2, h: int = 6, w: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(b, c, h, w, generator=g)
    masks = torch.rand(b, h, w, generator=g) > 0.6
    return images, masks


def test_unmasked_pixels_unchanged_and_masked_in_range() -> None:
    images, masks = _data()
    out = counterexamples(
        images, masks, copies=2, low=2.0, high=3.0, generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == (6, 2, 6, 5)
    for r in range(2):
        copy = out[r * 3 : (r + 1) * 3]
        keep = ~masks[:, None].expand_as(images)
        assert torch.equal(copy[keep], images[keep])
        inside = copy[~keep]
        assert bool((inside >= 2.0).all()) and bool((inside <= 3.0).all())


def test_constant_fill_is_one_value_per_image_and_channel() -> None:
    images, masks = _data()
    out = counterexamples(
        images, masks, fill="constant", generator=torch.Generator().manual_seed(0)
    )
    for b in range(3):
        for c in range(2):
            values = out[b, c][masks[b]]
            assert values.numel() > 1
            assert torch.allclose(values, values[0].expand_as(values))
    # distinct images and channels draw distinct values (with probability 1)
    firsts = torch.stack([out[b, c][masks[b]][0] for b in range(3) for c in range(2)])
    assert len(torch.unique(firsts)) == 6


def test_noise_fill_varies_per_pixel_and_is_uniform() -> None:
    images = torch.zeros(4, 1, 50, 50)
    masks = torch.ones(4, 50, 50, dtype=torch.bool)
    out = counterexamples(images, masks, fill="noise", generator=torch.Generator().manual_seed(0))
    # 10,000 uniform draws: mean 1/2 and variance 1/12 within a few standard errors
    assert abs(float(out.mean()) - 0.5) < 0.01
    assert abs(float(out.var()) - 1 / 12) < 0.005


def test_fractional_mask_blends() -> None:
    images = torch.full((1, 1, 2, 2), 0.2)
    masks = torch.full((1, 2, 2), 0.5)
    out = counterexamples(images, masks, low=1.0, high=1.0 + 1e-9, generator=None)
    assert torch.allclose(out, torch.full_like(out, 0.5 * 0.2 + 0.5 * 1.0), atol=1e-6)


def test_generator_reproducible_and_copies_differ() -> None:
    images, masks = _data()
    a = counterexamples(images, masks, copies=2, generator=torch.Generator().manual_seed(5))
    b = counterexamples(images, masks, copies=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.equal(a[:3], a[3:])


def test_gradient_flows_through_unmasked_pixels_only() -> None:
    images, masks = _data()
    images.requires_grad_(True)
    out = counterexamples(images, masks, generator=torch.Generator().manual_seed(0))
    out.sum().backward()
    assert images.grad is not None
    expected = (~masks[:, None]).expand_as(images).to(images.dtype)
    assert torch.equal(images.grad, expected)


def test_module_appends_copies_with_labels_and_masks() -> None:
    images, masks = _data()
    labels = torch.tensor([4, 7, 1])
    aug = Counterexamples(copies=2, generator=torch.Generator().manual_seed(0))
    x, y, m = aug(images, labels, masks)
    assert x.shape == (9, 2, 6, 5)
    assert torch.equal(x[:3], images)
    assert y.tolist() == [4, 7, 1] * 3
    assert torch.equal(m, masks.repeat(3, 1, 1))
    only = Counterexamples(
        copies=1, keep_original=False, generator=torch.Generator().manual_seed(0)
    )
    x1, y1, _ = only(images, labels, masks)
    assert x1.shape[0] == 3 and y1.tolist() == [4, 7, 1]


def test_errors() -> None:
    images, masks = _data()
    with pytest.raises(ShapeError, match="masks"):
        counterexamples(images, masks[:, :-1])
    with pytest.raises(RangeError, match="copies"):
        counterexamples(images, masks, copies=0)
    with pytest.raises(RangeError, match="fill"):
        counterexamples(images, masks, fill="zeros")
    with pytest.raises(RangeError, match="high"):
        Counterexamples(low=1.0, high=1.0)
    with pytest.raises(XAIFeedbackError, match="images"):
        counterexamples(images.long(), masks)


def test_objective_breaks_a_shortcut_in_the_loss() -> None:
    """The counterexample loss is the mean cross-entropy over originals and counterexamples."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 5, 3))
    images, masks = _data()
    labels = torch.tensor([0, 1, 2])
    g = torch.Generator().manual_seed(3)
    objective = counterexample_objective(Counterexamples(generator=g))
    batch = Batch(images, labels, masks, 0, 0, 1)
    loss, logits = objective(model, batch)
    again = counterexamples(images, masks, generator=torch.Generator().manual_seed(3))
    expected = torch.nn.functional.cross_entropy(
        model(torch.cat([images, again])), labels.repeat(2)
    )
    assert torch.allclose(loss, expected)
    assert torch.allclose(logits, model(images))
    with pytest.raises(XAIFeedbackError, match="masks"):
        objective(model, Batch(images, labels, None, 0, 0, 1))


def test_region_objective_needs_no_annotations() -> None:
    """``region=``: the same (H, W) mask randomized in every image; batch masks are ignored."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 5, 3))
    images, _ = _data()
    labels = torch.tensor([0, 1, 2])
    region = torch.zeros(6, 5, dtype=torch.bool)
    region[0] = True
    objective = counterexample_objective(
        Counterexamples(generator=torch.Generator().manual_seed(3)), region=region
    )
    loss, logits = objective(model, Batch(images, labels, None, 0, 0, 1))
    made = counterexamples(
        images, region.expand(3, 6, 5), generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(made[:, :, 1:], images[:, :, 1:])  # outside the region: untouched
    assert not torch.equal(made[:, :, 0], images[:, :, 0])
    expected = torch.nn.functional.cross_entropy(model(torch.cat([images, made])), labels.repeat(2))
    assert torch.allclose(loss, expected)
    assert torch.allclose(logits, model(images))
    with pytest.raises(ShapeError, match="region"):
        objective(model, Batch(images[:, :, :5], labels, None, 0, 0, 1))
    with pytest.raises(ShapeError, match="region"):
        counterexample_objective(region=region[None])
    plain = counterexample_objective()
    with pytest.raises(MissingInputError, match="region"):
        plain(model, Batch(images, labels, None, 0, 0, 1))


def test_periphery_mask_is_the_thresholded_center_prior() -> None:
    """Hand check: pixel (i, j) is periphery iff 1 - exp(-(x^2 + y^2) / (2 sigma^2)) >= t."""
    import math

    h, w, sigma, t = 28, 20, 0.6, 0.45
    mask = periphery_mask(h, w, sigma, threshold=t)
    assert mask.dtype == torch.bool and mask.shape == (h, w)
    for i, j in [(0, 0), (3, 10), (14, 10), (6, 2), (27, 19), (10, 4)]:
        y, x = (2 * i + 1) / h - 1, (2 * j + 1) / w - 1
        weight = 1 - math.exp(-(x * x + y * y) / (2 * sigma * sigma))
        assert bool(mask[i, j]) == (weight >= t), (i, j, weight)
    assert torch.equal(mask, center_weight(h, w, sigma) >= t)
    # the default covers the frame confound's 2 px border and leaves the center free
    default = periphery_mask(28, 28)
    border = torch.ones(28, 28, dtype=torch.bool)
    border[2:-2, 2:-2] = False
    assert bool(default[border].all()) and not bool(default[8:20, 8:20].any())
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(RangeError, match="threshold"):
            periphery_mask(8, 8, threshold=bad)


def test_region_range_matches_masked_min_and_max() -> None:
    images, masks = _data(b=4, c=2)
    low, high = region_range(images, masks)
    values = images.permute(1, 0, 2, 3)[:, masks]
    assert (low, high) == (float(values.min()), float(values.max()))
    constant = torch.full((2, 1, 3, 3), 0.25)
    lo, hi = region_range(constant, torch.ones(2, 3, 3, dtype=torch.bool))
    assert lo == 0.25 and hi > lo  # a usable (low, high) for Counterexamples
    Counterexamples(low=lo, high=hi)
    with pytest.raises(ShapeError, match="at least one pixel"):
        region_range(images, torch.zeros_like(masks))
    with pytest.raises(DTypeError, match="boolean"):
        region_range(images, masks.float())
    with pytest.raises(ShapeError, match="masks"):
        region_range(images, masks[:, :-1])


def test_swap_fill_takes_the_region_from_another_image() -> None:
    """``fill="swap"``: inside the mask, image b gets image pi(b) != b of the batch."""
    b = 6
    images = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 2, 4, 5).clone()
    images[:, 1] += 100  # channels travel together
    masks = torch.zeros(b, 4, 5, dtype=torch.bool)
    masks[:, 0] = True
    out = counterexamples(
        images, masks, copies=3, fill="swap", generator=torch.Generator().manual_seed(0)
    )
    out = out.view(3, b, 2, 4, 5)
    assert torch.equal(out[:, :, :, 1:], images[None, :, :, 1:].expand(3, -1, -1, -1, -1))
    source = out[:, :, 0, 0, 0].long()  # which image each copy's region came from
    assert torch.equal(out[:, :, 1, 0, 0], source.float() + 100)
    own = torch.arange(b)
    for r in range(3):
        assert sorted(source[r].tolist()) == own.tolist()  # a permutation of the batch
        assert not bool((source[r] == own).any())  # ... without fixed points
    again = counterexamples(
        images, masks, copies=3, fill="swap", generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(again.view(3, b, 2, 4, 5), out)
    one = counterexamples(images[:1], masks[:1], fill="swap")
    assert torch.equal(one, images[:1])  # nothing else to draw from


def test_several_augmentations_append_all_their_copies() -> None:
    """Originals once, then each augmentation's counterexamples, in order; logits of originals."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 5, 3))
    images, masks = _data()
    labels = torch.tensor([0, 1, 2])
    swap = Counterexamples(fill="swap", generator=torch.Generator().manual_seed(1))
    const = Counterexamples(2, generator=torch.Generator().manual_seed(2))
    loss, logits = counterexample_objective([swap, const])(
        model, Batch(images, labels, masks, 0, 0, 1)
    )
    a = counterexamples(images, masks, fill="swap", generator=torch.Generator().manual_seed(1))
    b = counterexamples(images, masks, copies=2, generator=torch.Generator().manual_seed(2))
    expected = torch.nn.functional.cross_entropy(model(torch.cat([images, a, b])), labels.repeat(4))
    assert torch.allclose(loss, expected)
    assert torch.allclose(logits, model(images))
    with pytest.raises(MissingInputError, match="augment"):
        counterexample_objective([])


# ------------------------------------------------- photos: RGB, any size, confound_dataset


@pytest.mark.parametrize("family", ["frame", "swatch", "patch", "center_dot"])
@pytest.mark.parametrize("fill", ["constant", "noise", "swap"])
def test_counterexamples_on_rgb_photos_of_any_size(family: str, fill: str) -> None:
    from xai_feedback.data import ImageDataset, confound_dataset

    g = torch.Generator().manual_seed(0)
    clean = ImageDataset(torch.rand(5, 3, 45, 71, generator=g), torch.arange(5))
    data = confound_dataset(clean, family, generator=g)
    assert data.masks is not None
    low, high = region_range(data.images, data.masks)
    assert low == pytest.approx(1 - 25 * 4 / 255) and high == pytest.approx(1.0)
    out = counterexamples(
        data.images, data.masks, copies=2, fill=fill, low=low, high=high, generator=g
    )
    assert out.shape == (10, 3, 45, 71) and out.dtype == data.images.dtype
    keep = ~data.masks[:, None].expand_as(data.images)
    # a swap takes another image's pixels at this image's region: the shortcut's gray where
    # the region is the same in every image (frame, dot), clean pixels where it moves
    in_range = fill != "swap" or family in ("frame", "center_dot")
    for r in range(2):
        copy = out[r * 5 : (r + 1) * 5]
        assert torch.equal(copy[keep], data.images[keep])
        inside = copy[~keep]
        assert in_range == bool(((inside >= low - 1e-6) & (inside <= high + 1e-6)).all())
    if fill == "constant":  # one value per image and channel, channels differ: a random color
        region = out[0].flatten(1)[:, data.masks[0].flatten()]
        assert torch.equal(region, region[:, :1].expand_as(region))
        assert len(torch.unique(region[:, 0])) == 3
    aug = Counterexamples(fill=fill, low=low, high=high, generator=g)
    x, y, m = aug(data.images, data.labels, data.masks)
    assert x.shape == (10, 3, 45, 71) and y.tolist() == [0, 1, 2, 3, 4] * 2 and m.shape[0] == 10


def test_counterexamples_on_the_watermark_and_a_non_square_periphery() -> None:
    import importlib.util

    from xai_feedback.data import ImageDataset, confound_dataset

    images = torch.rand(4, 3, 30, 50, generator=torch.Generator().manual_seed(0))
    ring = periphery_mask(30, 50).expand(4, -1, -1)
    out = counterexamples(images, ring, fill="swap", generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[:, :, ~ring[0]], images[:, :, ~ring[0]])
    assert not torch.equal(out[:, :, ring[0]], images[:, :, ring[0]])
    if importlib.util.find_spec("imagenet_w") is None:
        pytest.skip(
            "the watermark needs ImageNet-W's font: pip install --no-deps imagenet-w==1.0.0"
        )
    data = confound_dataset(ImageDataset(images, torch.arange(4)), "watermark")
    assert data.masks is not None
    out = counterexamples(data.images, data.masks, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out[:, :, ~data.masks[0]], images[:, :, ~data.masks[0]])
