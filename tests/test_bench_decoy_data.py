"""bench xil's data: Decoy-MNIST's square (Ross et al. 2017) as the XIL typology draws it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xai_feedback.cli import find_benchmarks, load_benchmark
from xai_feedback.data import ImageDataset, confound_dataset
from xai_feedback.errors import DTypeError, RangeError, ShapeError

load_benchmark("xil", find_benchmarks(Path(__file__).parent))
from _decoy import decoy_dataset, decoy_levels  # noqa: E402 (the benchmarks folder is on the path now)

N = 200


def _images(n: int = N, c: int = 1, h: int = 28, w: int = 28) -> torch.Tensor:
    # values in (0.2, 0.4): never one of the gray levels below, so the square is findable
    return 0.2 + 0.2 * torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(0))


def _labels(n: int = N) -> torch.Tensor:
    return torch.arange(n) % 10


def test_levels_by_hand() -> None:
    levels = decoy_levels(torch.arange(10))
    expected = torch.tensor([255, 230, 205, 180, 155, 130, 105, 80, 55, 30]) / 255
    torch.testing.assert_close(levels, expected)
    assert decoy_levels(torch.tensor([2]), step=10).item() == pytest.approx(235 / 255)


def test_square_is_4x4_in_one_corner_at_the_tied_level() -> None:
    images, labels = _images(), _labels()
    data = decoy_dataset(images, labels, tied=True, generator=torch.Generator().manual_seed(1))
    assert isinstance(data, ImageDataset) and data.masks is not None
    corners = {
        (0, 0): (slice(0, 4), slice(0, 4)),
        (0, 1): (slice(0, 4), slice(24, 28)),
        (1, 0): (slice(24, 28), slice(0, 4)),
        (1, 1): (slice(24, 28), slice(24, 28)),
    }
    seen = set()
    for i in range(N):  # reference: find the corner, compare with a hand-drawn square
        m = data.masks[i]
        assert int(m.sum()) == 16
        rows, cols = torch.nonzero(m, as_tuple=True)
        corner = (int(rows.min() > 0), int(cols.min() > 0))
        seen.add(corner)
        expected_mask = torch.zeros(28, 28, dtype=torch.bool)
        expected_mask[corners[corner]] = True
        assert torch.equal(m, expected_mask)
        expected = images[i].clone()
        expected[0][expected_mask] = (255 - 25 * int(labels[i])) / 255
        torch.testing.assert_close(data.images[i], expected)
    assert seen == set(corners)  # every corner is drawn
    assert torch.equal(data.labels, labels)


def test_random_levels_come_from_random_classes() -> None:
    images, labels = _images(2000), _labels(2000)
    data = decoy_dataset(images, labels, tied=False, generator=torch.Generator().manual_seed(2))
    assert data.masks is not None
    level = data.images[:, 0][data.masks].reshape(2000, 16)
    assert torch.equal(level.min(1).values, level.max(1).values)  # one level per square
    klass = ((255 - level[:, 0] * 255) / 25).round().long()
    torch.testing.assert_close(decoy_levels(klass), level[:, 0])  # a class's level
    agree = float((klass == labels).float().mean())
    assert 0.05 < agree < 0.15  # ~1/10: the level says nothing about the label
    assert set(klass.tolist()) == set(range(10))
    tied = decoy_dataset(images, labels, tied=True, generator=torch.Generator().manual_seed(2))
    assert tied.masks is not None
    tied_level = tied.images[:, 0][tied.masks].reshape(2000, 16)[:, 0]
    torch.testing.assert_close(tied_level, decoy_levels(labels))


def test_multichannel_gets_the_level_on_every_channel() -> None:
    data = decoy_dataset(
        _images(10, c=3), _labels(10), tied=True, generator=torch.Generator().manual_seed(0)
    )
    assert data.masks is not None
    for c in range(3):
        torch.testing.assert_close(
            data.images[:, c][data.masks].reshape(10, 16)[:, 0], decoy_levels(_labels(10))
        )


def test_clean_copy_and_masks() -> None:
    images, labels = _images(), _labels()
    data, clean = decoy_dataset(
        images, labels, tied=True, generator=torch.Generator().manual_seed(3), return_clean=True
    )
    assert data.masks is not None and clean.masks is not None
    assert torch.equal(clean.images, images) and torch.equal(clean.masks, data.masks)
    outside = ~data.masks[:, None]
    assert torch.equal(data.images[outside], images[outside])
    assert data.images.shape == images.shape and data.masks.shape == (N, 28, 28)
    assert data.masks.dtype == torch.bool


def test_deterministic_by_generator() -> None:
    images, labels = _images(), _labels()

    def make(seed: int) -> ImageDataset:
        return decoy_dataset(
            images, labels, tied=False, generator=torch.Generator().manual_seed(seed)
        )

    a, b, c = make(5), make(5), make(6)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)  # type: ignore[arg-type]
    assert not torch.equal(a.images, c.images)


def test_other_sizes_and_dtype() -> None:
    images = _images(8, h=10, w=12).double()
    data = decoy_dataset(
        images, _labels(8), tied=True, size=2, generator=torch.Generator().manual_seed(0)
    )
    assert data.images.dtype == torch.float64 and data.masks is not None
    assert data.masks.shape == (8, 10, 12) and int(data.masks[0].sum()) == 4


def test_bad_input() -> None:
    images, labels = _images(4), _labels(4)
    with pytest.raises(ShapeError, match="images"):
        decoy_dataset(images[:, 0], labels, tied=True)
    with pytest.raises(ShapeError, match="labels"):
        decoy_dataset(images, labels[:3], tied=True)
    with pytest.raises(DTypeError, match="images"):
        decoy_dataset((images * 255).to(torch.uint8), labels, tied=True)
    with pytest.raises(DTypeError, match="labels"):
        decoy_dataset(images, labels.float(), tied=True)
    with pytest.raises(DTypeError, match="tied"):
        decoy_dataset(images, labels, tied=1)  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="size"):
        decoy_dataset(images, labels, tied=True, size=29)
    with pytest.raises(RangeError, match="size"):
        decoy_dataset(images, labels, tied=True, size=0)
    with pytest.raises(RangeError, match="labels"):
        decoy_dataset(images, labels, tied=True, num_classes=2)
    with pytest.raises(RangeError, match="step"):
        decoy_dataset(images, labels, tied=False, num_classes=12, step=25)
    with pytest.raises(RangeError, match="labels"):
        decoy_dataset(images, -labels - 1, tied=True)


def test_the_library_draws_the_same_square() -> None:
    """confound_dataset(swatch, size 4, 10 levels) and the authors' draws agree where the
    corners agree: same pixels, same gray, same masks."""
    images, labels = _images(), _labels()
    ours = decoy_dataset(images, labels, tied=True, generator=torch.Generator().manual_seed(3))
    lib = confound_dataset(
        ImageDataset(images, labels),
        "swatch",
        size=4,
        levels=10,
        generator=torch.Generator().manual_seed(3),
    )
    assert lib.masks is not None and ours.masks is not None
    same = (lib.masks == ours.masks).flatten(1).all(1)
    assert 0 < int(same.sum()) < N  # both draw corners at random
    assert torch.equal(lib.images[same], ours.images[same])
