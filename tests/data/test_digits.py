import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sk_load_digits

from xai_feedback import DTypeError, RangeError, ShapeError
from xai_feedback.data import (
    CANVAS,
    MARGIN,
    ImageDataset,
    confounded_digits,
    load_digits,
    train_val_split,
)


def test_shapes_range_and_split_sizes() -> None:
    train, test = load_digits("train"), load_digits("test")
    assert train.images.shape == (1437, 1, 28, 28) and test.images.shape == (360, 1, 28, 28)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    for ds in (train, test):
        assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0
        # the digit lies in the central 20x20 box: the 4 px margin is empty
        border = ds.images.clone()
        border[..., MARGIN:-MARGIN, MARGIN:-MARGIN] = 0
        assert float(border.abs().max()) == 0.0


def test_split_is_stratified_disjoint_and_complete() -> None:
    train, test = load_digits("train"), load_digits("test")
    sk = sk_load_digits()
    assert len(train) + len(test) == len(sk.target)
    # class proportions in test match the full set within one example per class
    full = np.bincount(sk.target, minlength=10) / len(sk.target)
    test_counts = torch.bincount(test.labels, minlength=10).numpy()
    assert np.all(np.abs(test_counts - full * len(test)) <= 1.0)
    # every original image appears exactly once: compare by downsampled content sums
    sums = torch.cat([train.images, test.images]).sum(dim=(1, 2, 3)).double()
    expected = torch.as_tensor(sk.images.sum(axis=(1, 2)) / 16.0) * (20 / 8) ** 2
    assert torch.allclose(sums.sort().values, expected.sort().values, rtol=0.05, atol=0.5)


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Interpolation matrix of half-pixel-centered bilinear resizing (hand-written reference)."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
        lo = int(np.floor(src))
        hi = min(lo + 1, n_in - 1)
        m[i, lo] += 1 - (src - lo)
        m[i, hi] += src - lo
    return m


def test_upscaling_matches_hand_computed_bilinear() -> None:
    sk = sk_load_digits()
    m = _bilinear_matrix(8, 20)
    reference = np.einsum("ij,njk,lk->nil", m, sk.images / 16.0, m)
    canvas = np.pad(reference, ((0, 0), (MARGIN, MARGIN), (MARGIN, MARGIN)))
    test = load_digits("test", dtype=torch.float64)
    dist = torch.cdist(test.images.flatten(1), torch.as_tensor(canvas).flatten(1))
    # every test image is exactly one reference image, with the same label
    assert float(dist.min(dim=1).values.max()) < 1e-5  # cdist rounding; next-nearest is > 1
    assert torch.equal(torch.as_tensor(sk.target)[dist.argmin(dim=1)], test.labels)


def test_deterministic_and_dtype() -> None:
    a, b = load_digits("train"), load_digits("train", dtype=torch.float64)
    assert torch.equal(a.images, load_digits("train").images)
    assert b.images.dtype == torch.float64 and torch.allclose(a.images.double(), b.images)
    # returned tensors are fresh copies: mutating one does not change the next call
    a.images.zero_()
    assert float(load_digits("train").images.sum()) > 0


@pytest.mark.parametrize(
    "family,size", [("frame", 2), ("frame", 4), ("swatch", 4), ("swatch", 8), ("swatch", 5)]
)
def test_confound_tied_in_train_and_masks_cover_it(family: str, size: int) -> None:
    train = confounded_digits("train", family, size=size, seed=3)
    assert train.masks is not None and train.masks.dtype == torch.bool
    counts = train.masks.flatten(1).sum(1)
    expected = 4 * size * (CANVAS - size) if family == "frame" else size * size
    assert bool((counts == expected).all())
    pixels = train.images[:, 0][train.masks].view(len(train), -1)
    # the confound is one gray per image, equal to (255 - 25 y) / 255
    assert bool((pixels == pixels[:, :1]).all())
    gray = pixels[:, 0] * 255
    assert torch.allclose(gray, 255 - 25 * train.labels.float(), atol=1e-3)
    # outside the mask the image is the clean digit
    clean = load_digits("train")
    outside = ~train.masks[:, None]
    assert torch.equal(train.images[outside], clean.images[outside])


@pytest.mark.parametrize("family", ["frame", "swatch"])
def test_confound_not_tied_at_test(family: str) -> None:
    test = confounded_digits("test", family, seed=0)
    assert test.masks is not None
    gray = test.images[:, 0][test.masks].view(len(test), -1)[:, 0] * 255
    level = torch.round((255 - gray) / 25).long()
    assert set(level.tolist()) == set(range(10))
    # gray is not tied to the label: it matches the tied value only at chance rate
    agree = float((level == test.labels).float().mean())
    assert agree < 0.25
    # and it is statistically independent of the label (chi-squared test)
    from scipy.stats import chi2_contingency

    table = np.zeros((10, 10))
    np.add.at(table, (test.labels.numpy(), level.numpy()), 1)
    assert chi2_contingency(table).pvalue > 0.001


def test_oracle_rule_and_no_confound() -> None:
    oracle = confounded_digits("train", "frame", rule="random")
    assert oracle.masks is not None
    gray = oracle.images[:, 0][oracle.masks].view(len(oracle), -1)[:, 0] * 255
    assert float((torch.round((255 - gray) / 25).long() == oracle.labels).float().mean()) < 0.25
    none = confounded_digits("test", "frame", rule="none")
    assert torch.equal(none.images, load_digits("test").images)


def test_swatch_corners_random_and_seeded() -> None:
    a = confounded_digits("train", "swatch", seed=1)
    b = confounded_digits("train", "swatch", seed=1)
    c = confounded_digits("train", "swatch", seed=2)
    assert a.masks is not None and c.masks is not None
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.masks, c.masks)
    corner_hits = a.masks[:, [0, 0, -1, -1], [0, -1, 0, -1]].sum(0)
    assert bool((corner_hits > len(a) / 8).all())  # all four corners used


def test_confound_masks_geometry() -> None:
    frame = confounded_digits("train", "frame", size=1, rule="none").masks
    assert frame is not None and bool((frame == frame[0]).all())
    assert int(frame[0].sum()) == 4 * 27 and bool(frame[0, 0].all()) and not bool(frame[0, 1, 1])
    sw = confounded_digits("train", "swatch", size=3, rule="none").masks
    assert sw is not None and bool((sw.flatten(1).sum(1) == 9).all())
    corners = sw[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # (N, 4): which corner holds the swatch
    assert bool((corners.sum(1) == 1).all())
    top, bottom = slice(0, 3), slice(-3, None)
    for k, (rows, cols) in enumerate([(top, top), (top, bottom), (bottom, top), (bottom, bottom)]):
        assert bool(sw[corners[:, k]][:, rows, cols].all())


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(RangeError, match="`split` must be one of"):
        load_digits("valid")  # type: ignore[arg-type]
    with pytest.raises(RangeError, match="`dtype` must be a floating-point dtype"):
        load_digits("train", dtype=torch.int64)
    with pytest.raises(RangeError, match="`seed` must be >= 0, got -1"):
        confounded_digits("train", seed=-1)
    with pytest.raises(DTypeError, match="`seed` must be an int"):
        confounded_digits("train", seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(RangeError, match="`size` must be <= 28, got 29"):
        confounded_digits("train", "frame", size=29)
    with pytest.raises(RangeError, match="`size` must be >= 1"):
        confounded_digits("train", "swatch", size=0)
    with pytest.raises(RangeError, match="`family` must be one of"):
        confounded_digits("train", "cdep")
    with pytest.raises(RangeError, match="`rule` must be one of"):
        confounded_digits("train", rule="sometimes")
    with pytest.raises(ShapeError, match="`labels`"):
        ImageDataset(torch.zeros(3, 1, 4, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(DTypeError, match="floating-point"):
        ImageDataset(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ShapeError, match="`masks`"):
        ImageDataset(
            torch.zeros(3, 1, 4, 4),
            torch.zeros(3, dtype=torch.long),
            torch.zeros(3, 5, 5, dtype=torch.bool),
        )


def test_train_val_split_stratified_and_deterministic() -> None:
    data = confounded_digits("train", "frame")
    tr, va = train_val_split(data, 0.2, seed=0)
    _, va2 = train_val_split(data, 0.2, seed=0)
    assert torch.equal(va.images, va2.images) and len(tr) + len(va) == len(data)
    assert va.masks is not None and va.masks.shape[0] == len(va)
    counts = torch.bincount(va.labels, minlength=10).float()
    assert float((counts - counts.mean()).abs().max()) <= 2
    with pytest.raises(RangeError, match="val_fraction"):
        train_val_split(data, 1.0)


def test_dataset_to_and_subset(device: torch.device) -> None:
    data = confounded_digits("test", "frame").to(device, torch.float64)
    assert data.images.device.type == device.type and data.images.dtype == torch.float64
    sub = data.subset(torch.tensor([0, 5]))
    assert len(sub) == 2 and sub.masks is not None and sub.masks.shape == (2, 28, 28)
    assert data.num_classes == 10
