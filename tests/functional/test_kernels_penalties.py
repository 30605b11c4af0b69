import math

import pytest
import torch

from tests.conftest import gradcheck64
from xai_feedback import RangeError, ShapeError
from xai_feedback.functional import (
    center_penalty,
    center_weight,
    input_gradient_penalty,
    mask_penalty,
    masks_to_maps,
    normalized_grid,
)


def test_center_weight_hand_computed(device: torch.device, dtype: torch.dtype) -> None:
    k = center_weight(4, 4, sigma=0.5, device=device, dtype=dtype)
    assert k.shape == (4, 4) and k.dtype == dtype and k.device.type == device.type
    # pixel centers at -0.75, -0.25, 0.25, 0.75
    for i, y in enumerate((-0.75, -0.25, 0.25, 0.75)):
        for j, x in enumerate((-0.75, -0.25, 0.25, 0.75)):
            expected = 1 - math.exp(-(x * x + y * y) / (2 * 0.25))
            assert float(k[i, j]) == pytest.approx(expected, abs=1e-6)
    odd = center_weight(5, 5, 0.3)
    assert float(odd[2, 2]) == 0.0 and float(odd[0, 0]) > float(odd[0, 2]) > float(odd[1, 2]) > 0
    assert torch.allclose(odd, odd.T) and torch.allclose(odd, odd.flip(0))


def test_flat_kernel() -> None:
    k = center_weight(10, 10, sigma=0.2, shape="flat", radius=0.6)
    y, x = normalized_grid(10, 10)
    edge = torch.maximum(x.abs(), y.abs())
    assert bool((k[edge < 0.6] == 0).all())
    assert torch.allclose(k[edge > 0.6], ((edge[edge > 0.6] - 0.6) / 0.2).clamp(max=1))


def test_center_penalty_hand_computed() -> None:
    maps = torch.zeros(2, 3, 3)
    maps[0, 0, 0] = 2.0
    maps[1, 1, 1] = 5.0  # center: weight 0
    w = center_weight(3, 3, 0.5)
    assert float(center_penalty(maps, w)) == pytest.approx(float((2 * w[0, 0]) ** 2) / 18)
    # all-class maps: mean over classes too; signed evidence counts
    all_maps = torch.zeros(1, 2, 3, 3)
    all_maps[0, 1, 0, 0] = -2.0
    assert float(center_penalty(all_maps, w)) == pytest.approx(float((2 * w[0, 0]) ** 2) / 18)


def test_mask_penalty_hand_computed() -> None:
    maps = torch.arange(4.0).view(1, 2, 2)
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, 0, :] = True  # covers half of the two top cells
    cover = masks_to_maps(masks, (2, 2))
    assert torch.equal(cover, torch.tensor([[[0.5, 0.5], [0.0, 0.0]]]))
    assert float(mask_penalty(maps, masks)) == pytest.approx((0.0 + 0.25) / 4)


def test_input_gradient_penalty_matches_finite_differences() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 3).double()
    x = torch.rand(2, 1, 2, 3, dtype=torch.float64, requires_grad=True)
    masks = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]] * 2, dtype=torch.float64)
    logits = lin(x.flatten(1))
    value = input_gradient_penalty(logits, x, masks)

    def logp_sum(z: torch.Tensor) -> float:
        return float(torch.log_softmax(lin(z.flatten(1)), 1).sum())

    grad = torch.zeros_like(x)
    eps = 1e-6
    for idx in range(x.numel()):
        e = torch.zeros(x.numel(), dtype=torch.float64)
        e[idx] = eps
        e = e.view_as(x)
        grad.view(-1)[idx] = (logp_sum(x + e) - logp_sum(x - e)) / (2 * eps)
    expected = float((masks[:, None] * grad).pow(2).sum()) / 2
    assert float(value) == pytest.approx(expected, rel=1e-6)


def test_penalties_gradcheck_float64() -> None:
    w = center_weight(4, 5, 0.5, dtype=torch.float64)
    masks = torch.rand(2, 8, 10) > 0.5
    gradcheck64(lambda m: center_penalty(m, w), [torch.randn(2, 3, 4, 5)])
    gradcheck64(lambda m: mask_penalty(m, masks), [torch.randn(2, 4, 5)])
    lin = torch.nn.Linear(4, 3).double()

    def rrr(x: torch.Tensor) -> torch.Tensor:
        return input_gradient_penalty(
            lin(x.flatten(1)), x, torch.ones(2, 2, 2, dtype=torch.float64)
        )

    gradcheck64(rrr, [torch.rand(2, 1, 2, 2)], second_order=False)


def test_bad_inputs() -> None:
    with pytest.raises(RangeError, match="`sigma` must be > 0, got 0"):
        center_weight(7, 7, sigma=0.0)
    with pytest.raises(RangeError, match="`sigma` must be > 0"):
        center_weight(7, 7, sigma=-1.0)
    with pytest.raises(RangeError, match="`shape` must be one of"):
        center_weight(7, 7, shape="disc")
    with pytest.raises(ShapeError, match=r"`maps` must have shape \(B, h, w\) or \(B, K, h, w\)"):
        center_penalty(torch.rand(7, 7), center_weight(7, 7))
    with pytest.raises(ShapeError, match="`weight`"):
        center_penalty(torch.rand(2, 7, 7), center_weight(5, 5))
    with pytest.raises(ShapeError, match="`masks`"):
        mask_penalty(torch.rand(2, 7, 7), torch.zeros(3, 28, 28))
    x = torch.rand(1, 1, 2, 2)
    with pytest.raises(ValueError, match="require grad"):
        input_gradient_penalty(torch.rand(1, 3), x, torch.ones(1, 2, 2))
