"""The one token-to-grid fold against index arithmetic, for values and for features."""

from __future__ import annotations

import pytest
import torch

from xai_feedback.errors import ShapeError
from xai_feedback.functional.tokens import tokens_to_grid


@pytest.mark.parametrize(("prefix_tokens", "grid"), [(0, (3, 3)), (1, (2, 3)), (5, (4, 1))])
def test_features_and_values_fold_to_the_same_cells(
    prefix_tokens: int, grid: tuple[int, int]
) -> None:
    b, c, (h, w) = 2, 3, grid
    n = prefix_tokens + h * w
    features = torch.arange(b * n * c, dtype=torch.float64).view(b, n, c)  # every entry unique
    folded = tokens_to_grid(features, grid, prefix_tokens=prefix_tokens)
    assert folded.shape == (b, c, h, w)
    for i in range(h):
        for j in range(w):
            token = prefix_tokens + i * w + j
            assert torch.equal(folded[:, :, i, j], features[:, token])
    for ch in range(c):  # each channel folds as the (B, N) values of that channel
        values = tokens_to_grid(features[..., ch], grid, prefix_tokens=prefix_tokens)
        assert torch.equal(folded[:, ch], values)


def test_bad_layouts_name_the_knobs() -> None:
    with pytest.raises(ShapeError, match="fewer than `prefix_tokens`=4"):
        tokens_to_grid(torch.zeros(1, 3, 2), prefix_tokens=4)
    with pytest.raises(ShapeError, match=r"`prefix_tokens`=2\) are not a square"):
        tokens_to_grid(torch.zeros(1, 7, 2), prefix_tokens=2)
    with pytest.raises(ShapeError, match=r"`grid`=\(2, 2\) has 4 cells but there are 5"):
        tokens_to_grid(torch.zeros(1, 6), (2, 2), prefix_tokens=1)
    with pytest.raises(ShapeError, match=r"\(B, N\) or features \(B, N, C\)"):
        tokens_to_grid(torch.zeros(1, 2, 2, 2))
