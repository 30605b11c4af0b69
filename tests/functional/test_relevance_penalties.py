"""RobustViT's loss kernels against explicit per-pixel sums."""

from __future__ import annotations

import pytest
import torch

from xai_feedback.errors import RangeError, ShapeError
from xai_feedback.functional.penalties import (
    relevance_background_loss,
    relevance_foreground_loss,
    robustvit_penalty,
)


def test_kernels_equal_per_pixel_sums(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    r = torch.rand(2, 3, 4, generator=g).to(dtype)
    m = torch.rand(2, 3, 4, generator=g).to(dtype)  # soft masks too
    bg = fg = 0.0
    for b in range(2):
        for i in range(3):
            for j in range(4):
                bg += float((1 - m[b, i, j]) * r[b, i, j]) ** 2
                fg += float(m[b, i, j] * r[b, i, j] - m[b, i, j]) ** 2
    got_bg, got_fg = relevance_background_loss(r, m), relevance_foreground_loss(r, m)
    assert got_bg.dtype == dtype
    assert float(got_bg) == pytest.approx(bg / 24, rel=1e-5)
    assert float(got_fg) == pytest.approx(fg / 24, rel=1e-5)
    total = robustvit_penalty(r, m, background=1.5, foreground=0.5)
    assert float(total) == pytest.approx(1.5 * bg / 24 + 0.5 * fg / 24, rel=1e-5)


def test_boolean_masks_and_bad_inputs() -> None:
    r = torch.rand(1, 2, 2)
    m = torch.tensor([[[True, False], [False, False]]])
    assert float(relevance_foreground_loss(r, m)) == pytest.approx(float((1 - r[0, 0, 0]) ** 2) / 4)
    with pytest.raises(ShapeError, match="masks"):
        robustvit_penalty(r, torch.ones(1, 4, 4))
    with pytest.raises(RangeError, match="foreground"):
        robustvit_penalty(r, m, foreground=-0.1)
