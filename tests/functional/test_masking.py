import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xai_feedback import MissingInputError, RangeError, ShapeError
from xai_feedback.functional import apply_mask, blend, fill_values, threshold_mask, topk_mask


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 4),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    fraction=st.floats(0.0, 1.0),
    ties=st.booleans(),
    largest=st.booleans(),
)
def test_topk_mask_selects_exactly_round_f_hw(
    b: int, h: int, w: int, fraction: float, ties: bool, largest: bool
) -> None:
    g = torch.Generator().manual_seed(b * 100 + h * 10 + w)
    maps = (
        torch.randint(0, 3, (b, h, w), generator=g).float()
        if ties
        else torch.rand(b, h, w, generator=g)
    )
    mask = topk_mask(maps, fraction, largest=largest)
    k = round(fraction * h * w)
    assert bool((mask.flatten(1).sum(1) == k).all())
    # every selected value ranks at least as high as every unselected one
    for i in range(b):
        sel, rest = maps[i][mask[i]], maps[i][~mask[i]]
        if len(sel) and len(rest):
            assert (sel.min() >= rest.max()) if largest else (sel.max() <= rest.min())


def test_fill_values_per_image_and_channel(device: torch.device, dtype: torch.dtype) -> None:
    x = torch.rand(3, 2, 4, 5, device=device, dtype=dtype)
    for fill, ref in (
        ("mean", x.mean(dim=(2, 3))),
        ("max", x.amax(dim=(2, 3))),
        ("min", x.amin(dim=(2, 3))),
    ):
        v = fill_values(x, fill)
        assert v.shape == (3, 2, 1, 1) and v.dtype == dtype and v.device.type == device.type
        assert torch.allclose(v[:, :, 0, 0], ref)
    assert float(fill_values(x, "zero").abs().sum()) == 0
    ds = fill_values(x, "dataset_mean", torch.tensor([0.1, 0.9]))
    assert torch.allclose(
        ds[:, :, 0, 0], torch.tensor([[0.1, 0.9]] * 3, dtype=dtype, device=device)
    )


def test_apply_mask_threshold_and_blend() -> None:
    x = torch.arange(8.0).view(2, 1, 2, 2)
    maps = torch.tensor([[[0.9, 0.1], [0.5, 1.0]], [[0.0, 0.0], [0.0, 0.86]]])
    mask = threshold_mask(maps, 0.85)
    out = apply_mask(x, mask, fill_values(x, "mean"))
    assert out[0, 0].tolist() == [[1.5, 1.0], [2.0, 1.5]]
    assert out[1, 0].tolist() == [[4.0, 5.0], [6.0, 5.5]]
    assert torch.allclose(blend(x, maps, 0.5), (1 - 0.5 * maps[:, None]) * x)


def test_bad_inputs() -> None:
    with pytest.raises(RangeError, match="`fraction` must be <= 1"):
        topk_mask(torch.rand(1, 2, 2), 1.5)
    with pytest.raises(RangeError, match="`threshold` must be >= 0"):
        threshold_mask(torch.rand(1, 2, 2), -0.1)
    with pytest.raises(RangeError, match="`fill` must be one of"):
        fill_values(torch.rand(1, 1, 2, 2), "median")
    with pytest.raises(MissingInputError, match="`dataset_mean`"):
        fill_values(torch.rand(1, 3, 2, 2), "dataset_mean")
    with pytest.raises(ShapeError, match="`mask`"):
        apply_mask(torch.rand(1, 1, 2, 2), torch.zeros(1, 3, 3, dtype=torch.bool), torch.zeros(1))
    with pytest.raises(RangeError, match="`strength` must be <= 1"):
        blend(torch.rand(1, 1, 2, 2), torch.rand(1, 2, 2), 2.0)
