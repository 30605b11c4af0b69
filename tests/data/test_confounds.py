"""The confound battery: what each family draws, where, and how it is tied to the label."""

from __future__ import annotations

import pytest
import torch

from xai_feedback.data import CONFOUND_FAMILIES, confounded_digits, load_digits
from xai_feedback.data.confounds import SHORTCUT_FAMILIES
from xai_feedback.errors import RangeError


def _levels(family: str, data) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The level drawn in each image's masked region, read back from the pixels."""
    first = data.images[:, 0][data.masks].split(data.masks.flatten(1).sum(1).tolist())
    values = torch.stack([v[0] for v in first]).double()
    if family == "background":
        return values / 0.05
    return (255.0 - 255.0 * values) / 25.0


@pytest.mark.parametrize("family", SHORTCUT_FAMILIES)
def test_shortcut_tied_in_train_random_at_test(family: str) -> None:
    train = confounded_digits("train", family)
    test = confounded_digits("test", family)
    assert train.masks is not None and test.masks is not None
    assert bool(train.masks.flatten(1).any(1).all())
    # constant over each image's region
    for data in (train, test):
        region = data.images[:, 0] * data.masks
        top = region.flatten(1).max(1).values
        low = torch.where(data.masks, data.images[:, 0], torch.inf).flatten(1).min(1).values
        assert torch.allclose(top, low)
    tied = _levels(family, train)
    assert torch.allclose(tied, train.labels.double(), atol=1e-4)
    random = _levels(family, test).round().long()
    agree = float((random == test.labels).double().mean())
    assert agree < 0.25  # chance is 0.1
    assert len(torch.unique(random)) == 10
    # outside the mask the digits are untouched
    clean = load_digits("train").images[:, 0]
    assert torch.equal(train.images[:, 0][~train.masks], clean[~train.masks])


def test_geometry_of_each_family() -> None:
    frame = confounded_digits("train", "frame").masks
    stripe = confounded_digits("train", "stripe").masks
    dot = confounded_digits("train", "center_dot").masks
    swatch = confounded_digits("train", "swatch").masks
    patch = confounded_digits("train", "patch").masks
    assert frame is not None and stripe is not None and dot is not None
    assert swatch is not None and patch is not None
    assert int(frame[0].sum()) == 28 * 28 - 24 * 24
    assert bool(stripe[:, :, :3].all()) and not bool(stripe[:, :, 3:].any())
    assert bool(dot[:, 12:16, 12:16].all()) and int(dot[0].sum()) == 16
    assert bool((swatch.flatten(1).sum(1) == 36).all())
    corners = swatch[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert bool((corners.sum(1) == 1).all())
    assert len(torch.unique(corners.float().argmax(1))) == 4
    assert bool((patch.flatten(1).sum(1) == 16).all())
    # random positions: the patch's top-left corner takes many values
    rows = patch.any(2).float().argmax(1)
    assert len(torch.unique(rows)) > 20


def test_background_is_global_and_faint() -> None:
    train = confounded_digits("train", "background")
    assert train.masks is not None
    share = float(train.masks.float().mean())
    assert 0.5 < share < 0.9
    assert float(train.images[:, 0][train.masks].max()) <= 0.45 + 1e-6


def test_uncentered_moves_the_digit_and_none_is_clean() -> None:
    clean = load_digits("test")
    none = confounded_digits("test", "none")
    assert torch.equal(none.images, clean.images)
    assert none.masks is not None and not bool(none.masks.any())
    un = confounded_digits("test", "uncentered")
    assert un.masks is not None and not bool(un.masks.any())
    # the ink's center of mass spreads far from the canvas center
    ink = un.images[:, 0]
    rows = torch.arange(28, dtype=ink.dtype)
    cy = (ink.sum(2) * rows).sum(1) / ink.sum((1, 2))
    cx = (ink.sum(1) * rows).sum(1) / ink.sum((1, 2))
    assert float(cy.std()) > 2.5 and float(cx.std()) > 2.5
    assert float(clean.images[:, 0].sum((1, 2)).mean()) > float(ink.sum((1, 2)).mean())


@pytest.mark.parametrize("family", CONFOUND_FAMILIES)
def test_deterministic_and_rule_none(family: str) -> None:
    a = confounded_digits("train", family, seed=3)
    b = confounded_digits("train", family, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)  # type: ignore[arg-type]
    blank = confounded_digits("train", family, rule="none", seed=3)
    assert torch.equal(blank.masks, a.masks)  # type: ignore[arg-type]
    if family in SHORTCUT_FAMILIES:
        assert not torch.equal(blank.images, a.images)
        other = confounded_digits("test", family, seed=4)
        assert not torch.equal(other.images, confounded_digits("test", family, seed=3).images)


def test_errors() -> None:
    with pytest.raises(RangeError, match="family"):
        confounded_digits("train", "stripes")
    with pytest.raises(RangeError, match="rule"):
        confounded_digits("train", "frame", rule="cdep")
    with pytest.raises(RangeError, match="seed"):
        confounded_digits("train", "frame", seed=-1)
