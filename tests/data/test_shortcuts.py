"""confound_dataset: the battery's shortcuts and ImageNet-W's watermark on any image data set."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from xai_feedback.data import (
    CONFOUND_FAMILIES,
    IMAGE_CONFOUND_FAMILIES,
    ImageDataset,
    confound_dataset,
    confounded_digits,
    load_digits,
    watermark_alpha,
)
from xai_feedback.data.confounds import SHORTCUT_FAMILIES
from xai_feedback.errors import DTypeError, RangeError

GRAY = ("frame", "swatch", "stripe", "center_dot", "patch")
N, H, W = 20, 37, 53  # sizes at 37 px: frame 3, swatch 8, stripe 4, dot 5, patch 5


def _photos(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = 0.1 + 0.8 * torch.rand(N, 3, H, W, generator=g, dtype=torch.float64)
    labels = torch.arange(N) % 10
    return ImageDataset(images.to(device, dtype), labels.to(device), None, "photos", ())


def _first_level(out: ImageDataset) -> torch.Tensor:
    """The value of each image's first marked pixel, per channel: (N, C)."""
    assert out.masks is not None
    flat = out.masks.flatten(1).float().argmax(1)
    return out.images.flatten(2)[torch.arange(len(out)), :, flat]


def _watermark_font() -> None:
    if importlib.util.find_spec("imagenet_w") is None:
        pytest.skip(
            "the watermark family needs ImageNet-W's font: pip install --no-deps imagenet-w==1.0.0"
        )


@pytest.mark.parametrize("family", GRAY)
def test_gray_families_on_rgb_images_of_any_size(family: str) -> None:
    data = _photos()
    g = torch.Generator().manual_seed(1)
    tied = confound_dataset(data, family, generator=g)
    assert tied.masks is not None and tied.masks.shape == (N, H, W)
    assert tied.images.shape == (N, 3, H, W) and tied.classes == data.classes
    area = {"frame": H * W - (H - 6) * (W - 6), "swatch": 64, "stripe": 4 * H}
    area |= {"center_dot": 25, "patch": 25}
    assert tied.masks.flatten(1).sum(1).tolist() == [area[family]] * N
    # the gray is the same in every channel, constant over the region, tied to the label
    gray = (255 - 25 * data.labels.double()) / 255
    assert torch.allclose(_first_level(tied).double(), gray[:, None].expand(N, 3))
    inside = tied.images.transpose(0, 1)[:, tied.masks]  # (C, marked pixels)
    assert torch.equal(inside, inside[:1].expand_as(inside))
    outside = ~tied.masks[:, None].expand_as(data.images)
    assert torch.equal(tied.images[outside], data.images[outside])
    assert tied.name == f"photos+{family}-tied"
    # the same generator state: same positions for every rule; random levels; none draws nothing
    random = confound_dataset(data, family, rule="random", generator=g.manual_seed(1))
    none = confound_dataset(data, family, rule="none", generator=g.manual_seed(1))
    assert torch.equal(random.masks, tied.masks) and torch.equal(none.masks, tied.masks)  # type: ignore[arg-type]
    assert torch.equal(none.images, data.images)
    levels = ((255 - 255 * _first_level(random)[:, 0].double()) / 25).round().long()
    assert not torch.equal(levels, data.labels)


def test_geometry_at_224_px_and_on_non_square_images() -> None:
    data = ImageDataset(torch.zeros(4, 3, 224, 224), torch.tensor([0, 1, 2, 3]))
    frame = confound_dataset(data, "frame").masks
    dot = confound_dataset(data, "center_dot").masks
    assert frame is not None and dot is not None
    assert bool(frame[0, 15].all()) and not bool(frame[0, 16, 16:-16].any())  # 16 px frame
    assert bool(dot[0, 96:128, 96:128].all()) and int(dot[0].sum()) == 32 * 32
    swatch = confound_dataset(data, "swatch", size=10).masks
    assert swatch is not None and swatch.flatten(1).sum(1).tolist() == [100] * 4
    wide = ImageDataset(torch.zeros(2, 1, 20, 60), torch.tensor([0, 1]))
    stripe = confound_dataset(wide, "stripe").masks  # 3 * 20 / 28 -> 2 px
    corner = confound_dataset(wide, "swatch", generator=torch.Generator().manual_seed(3)).masks
    assert stripe is not None and bool(stripe[:, :, :2].all()) and not bool(stripe[:, :, 2:].any())
    assert corner is not None
    assert bool(corner[:, [0, 0, -1, -1], [0, -1, 0, -1]].any(1).all())  # each in a corner


def test_digit_battery_is_confound_dataset_at_28_px() -> None:
    digits = load_digits("train")
    for family in SHORTCUT_FAMILIES:
        for rule, split_test in (("tied", 0), ("random", 1)):
            split = "test" if split_test else "train"
            clean = load_digits(split)
            seed = 2 * CONFOUND_FAMILIES.index(family) + split_test
            g = torch.Generator().manual_seed(seed)
            ours = confound_dataset(clean, family, rule=rule, levels=10, generator=g)
            theirs = confounded_digits(split, family, rule=rule)
            assert torch.equal(ours.images, theirs.images), (family, rule)
            assert torch.equal(ours.masks, theirs.masks), (family, rule)  # type: ignore[arg-type]
    assert len(digits) == 1437


def test_background_on_dark_background_data(dtype: torch.dtype) -> None:
    images = torch.zeros(3, 1, 10, 10, dtype=dtype)
    images[:, :, 3:7, 3:7] = 0.8  # an object on black
    data = ImageDataset(images, torch.tensor([0, 4, 9]))
    out = confound_dataset(data, "background", levels=10)
    assert out.masks is not None and out.masks.flatten(1).sum(1).tolist() == [84] * 3
    assert out.images.dtype == dtype
    assert torch.allclose(_first_level(out)[:, 0], 0.05 * data.labels.to(dtype))
    assert torch.equal(out.images[:, :, 3:7, 3:7], images[:, :, 3:7, 3:7])
    # RGB: a pixel is background when every channel is below the threshold
    rgb = torch.zeros(1, 3, 4, 4)
    rgb[0, 2, 0, 0] = 0.5
    masks = confound_dataset(ImageDataset(rgb, torch.tensor([1])), "background").masks
    assert masks is not None and not bool(masks[0, 0, 0]) and int(masks.sum()) == 15
    wide = confound_dataset(ImageDataset(rgb, torch.tensor([1])), "background", threshold=0.6)
    assert wide.masks is not None and int(wide.masks.sum()) == 16


def test_more_classes_than_ten_and_opacity() -> None:
    data = ImageDataset(torch.zeros(26, 3, 12, 12), torch.arange(26))
    out = confound_dataset(data, "center_dot")  # 26 levels, from the labels
    values = _first_level(out)[:, 0].double() * 255
    assert torch.allclose(values, 255 - 10 * torch.arange(26).double())  # step 250 / 25
    background = confound_dataset(data, "background")
    assert float(_first_level(background).max()) == pytest.approx(0.45)
    named = ImageDataset(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), None, "", ("a",) * 20)
    assert float(_first_level(confound_dataset(named, "patch"))[1, 0]) * 255 == pytest.approx(
        255 - 250 / 19
    )
    half = confound_dataset(ImageDataset(torch.ones(1, 1, 8, 8), torch.tensor([9])), "frame",
                            levels=10, opacity=0.5)  # fmt: skip
    assert float(half.images[0, 0, 0, 0]) == pytest.approx(0.5 + 0.5 * 30 / 255)


def test_device_dtype_and_empty(device: torch.device, dtype: torch.dtype) -> None:
    data = _photos(device, dtype)
    for family in ("swatch", "patch", "background", "none"):
        out = confound_dataset(data, family, rule="random", generator=torch.Generator())
        assert out.images.device == data.images.device and out.images.dtype == dtype
        assert out.masks is not None and out.masks.device == data.images.device
    empty = ImageDataset(torch.zeros(0, 3, 9, 9), torch.zeros(0, dtype=torch.long))
    assert len(confound_dataset(empty, "patch")) == 0


def test_errors() -> None:
    data = _photos()
    with pytest.raises(RangeError, match="`family`"):
        confound_dataset(data, "uncentered")
    with pytest.raises(RangeError, match="`rule`"):
        confound_dataset(data, "frame", rule="cdep")
    with pytest.raises(RangeError, match="`size`"):
        confound_dataset(data, "swatch", size=H + 1)
    with pytest.raises(RangeError, match="`levels`"):
        confound_dataset(data, "frame", levels=5)
    confound_dataset(data, "frame", levels=5, rule="random")  # random levels need no labels
    with pytest.raises(RangeError, match="`opacity`"):
        confound_dataset(data, "frame", opacity=0)
    with pytest.raises(DTypeError, match="`data`"):
        confound_dataset(data.images, "frame")  # type: ignore[arg-type]
    with pytest.raises(DTypeError, match="`generator`"):
        confound_dataset(data, "frame", generator=0)  # type: ignore[arg-type]
    assert set(IMAGE_CONFOUND_FAMILIES) == {*SHORTCUT_FAMILIES, "watermark", "none"}


# --------------------------------------------------------------------------- the watermark


def test_watermark_alpha_is_imagenet_w_text_at_its_place() -> None:
    _watermark_font()
    alpha = watermark_alpha(224, 224, dtype=torch.float64)
    assert alpha.shape == (224, 224) and float(alpha.max()) == 1.0 and float(alpha.min()) == 0.0
    rows = torch.nonzero(alpha.sum(1)).flatten()
    cols = torch.nonzero(alpha.sum(0)).flatten()
    # drawn at (0.01 W, 0.4 H) in a 36 px font: a band across the image, 40 % down
    assert 89 <= int(rows.min()) <= 100 and int(rows.max()) < 90 + 50
    assert int(cols.min()) <= 10 and int(cols.max()) > 180
    for h, w in ((28, 28), (40, 64)):
        small = watermark_alpha(h, w)
        assert small.shape == (h, w) and bool(small.max() > 0)


def test_watermark_family_opacity_tied_to_the_label() -> None:
    _watermark_font()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(10, 3, 64, 64, generator=g, dtype=torch.float64)
    data = ImageDataset(images, torch.arange(10))
    out = confound_dataset(data, "watermark")
    alpha = watermark_alpha(64, 64, dtype=torch.float64)
    assert out.masks is not None and torch.equal(out.masks, (alpha > 0).expand(10, -1, -1))
    opacity = 0.5 * (10 - torch.arange(10).double()) / 10  # class 0: ImageNet-W's 0.5
    expected = images + opacity[:, None, None, None] * alpha * (1 - images)
    assert torch.allclose(out.images, expected)
    assert torch.equal(out.images[:, :, ~out.masks[0]], images[:, :, ~out.masks[0]])
    none = confound_dataset(data, "watermark", rule="none")
    assert torch.equal(none.images, images) and torch.equal(none.masks, out.masks)  # type: ignore[arg-type]
    # any size and gray images; the same pixels for every image
    gray = ImageDataset(torch.zeros(3, 1, 28, 40), torch.tensor([0, 1, 2]))
    drawn = confound_dataset(gray, "watermark", opacity=1.0)
    assert drawn.masks is not None and bool(drawn.masks.any())
    # on black at opacity 1 the image is the alpha (faint at 28 px: a 4 px font, antialiased)
    assert torch.allclose(drawn.images[0, 0], watermark_alpha(28, 40))
    brightness = drawn.images.flatten(1).sum(1)
    assert bool(brightness[0] > brightness[1] > brightness[2])


def test_watermark_matches_imagenet_w_add_watermark() -> None:
    _watermark_font()
    pytest.importorskip(
        "torchvision", reason="imagenet_w.AddWatermark imports torchvision (not a dependency)"
    )
    from imagenet_w import AddWatermark

    g = torch.Generator().manual_seed(0)
    images = (torch.rand(2, 3, 224, 224, generator=g) * 255).round() / 255
    out = confound_dataset(ImageDataset(images, torch.tensor([0, 0])), "watermark", levels=10)
    reference = torch.stack([AddWatermark()(image) for image in images])
    assert float((out.images - reference).abs().max()) <= 1 / 255 + 1e-6  # 8-bit rounding
