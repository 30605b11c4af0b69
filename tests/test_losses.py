import pytest
import torch

from tests.conftest import gradcheck64
from xai_feedback import MissingInputError, RangeError, ShapeError
from xai_feedback.data import confounded_digits
from xai_feedback.functional import center_penalty, center_weight, mask_penalty
from xai_feedback.losses import (
    CenterPenalty,
    ConstantSchedule,
    MaskPenalty,
    PhaseSchedule,
    RampSchedule,
    RRRPenalty,
)
from xai_feedback.models import GAPNet
from xai_feedback.objectives import cam_penalty_objective, rrr_objective
from xai_feedback.training import Batch, fit


def test_center_penalty_module_variants_match_functional(
    dtype: torch.dtype, device: torch.device
) -> None:
    maps = torch.randn(4, 10, 7, 7, dtype=dtype, device=device)
    target = torch.tensor([0, 3, 9, 3], device=device)
    w = center_weight(7, 7, 0.5, dtype=dtype, device=device)
    out = CenterPenalty(0.5)(maps)
    assert out.dtype == dtype and out.device.type == device.type
    assert torch.allclose(out, center_penalty(maps, w))
    tgt = CenterPenalty(0.5, classes="target", signed=False)(maps, target=target)
    assert torch.allclose(tgt, center_penalty(torch.relu(maps[torch.arange(4), target]), w))
    # ReLU hides negative evidence: an all-negative map costs nothing unsigned
    neg = -maps.abs()
    assert float(CenterPenalty(signed=False)(neg)) == 0.0 and float(CenterPenalty()(neg)) > 0
    flat = CenterPenalty(0.2, shape="flat", radius=0.5)(maps)
    w_flat = center_weight(7, 7, 0.2, shape="flat", radius=0.5, dtype=dtype, device=device)
    assert torch.allclose(flat, center_penalty(maps, w_flat))


def test_mask_penalty_module() -> None:
    maps = torch.randn(2, 10, 7, 7)
    masks = torch.zeros(2, 28, 28, dtype=torch.bool)
    masks[:, :2] = True
    assert torch.allclose(MaskPenalty()(maps, masks=masks), mask_penalty(maps, masks))
    assert float(MaskPenalty()(maps, masks=torch.zeros_like(masks))) == 0.0


def test_module_penalties_gradcheck() -> None:
    target = torch.tensor([1, 0])
    gradcheck64(lambda m: CenterPenalty(0.4)(m), [torch.randn(2, 3, 5, 5)])
    gradcheck64(
        lambda m: CenterPenalty(0.4, classes="target", normalize="max")(m, target=target),
        [torch.randn(2, 3, 5, 5)],
        second_order=False,
    )
    masks = torch.rand(2, 10, 10) > 0.5
    gradcheck64(lambda m: MaskPenalty()(m, masks=masks), [torch.randn(2, 3, 5, 5)])


def test_schedules() -> None:
    assert ConstantSchedule(3.0).weights(5, 10) == (1.0, 3.0)
    s = PhaseSchedule([(2, 1.0, 0.0), (3, 0.8, 500.0), (1, 1.0, 0.0)])
    assert [s.weights(e, 8) for e in (0, 2, 4, 5, 7)] == [
        (1, 0),
        (0.8, 500),
        (0.8, 500),
        (1, 0),
        (1, 0),
    ]
    r = RampSchedule(lam=10.0, start=2, end=4)
    assert [r.weights(e, 6)[1] for e in range(6)] == [0.0, 0.0, 5.0, 10.0, 10.0, 10.0]
    with pytest.raises(RangeError, match="at least one"):
        PhaseSchedule([])
    with pytest.raises(RangeError, match=r"phases\[0\] epochs"):
        PhaseSchedule([(0, 1.0, 1.0)])
    with pytest.raises(RangeError, match="`end` must be >= 3"):
        RampSchedule(1.0, start=2, end=2)
    with pytest.raises(RangeError, match="`lam` must be >= 0"):
        ConstantSchedule(-1.0)


def test_objective_uses_schedule_and_penalty() -> None:
    model = GAPNet(width=4, generator=torch.Generator().manual_seed(0))
    data = confounded_digits("train").subset(torch.arange(16))

    def batch(epoch: int) -> Batch:
        return Batch(data.images, data.labels, data.masks, epoch, 0, 3)

    obj = cam_penalty_objective(CenterPenalty(0.5), PhaseSchedule([(1, 1.0, 0.0), (1, 1.0, 100.0)]))
    off, logits = obj(model, batch(0))
    on, _ = obj(model, batch(1))
    ce = torch.nn.functional.cross_entropy(logits, data.labels)
    assert torch.allclose(off, ce) and float(on) > float(off)
    mask_obj = cam_penalty_objective(MaskPenalty(), 1.0)
    with pytest.raises(MissingInputError, match="needs `masks`"):
        mask_obj(model, Batch(data.images, data.labels, None, 0, 0, 1))
    rrr, _ = rrr_objective(None, 1.0)(model, batch(0))
    assert rrr.requires_grad and float(rrr) > float(ce)


def test_penalty_moves_evidence_out_of_the_frame() -> None:
    # a few epochs with a strong mask penalty cut the CAM energy on the frame
    data = confounded_digits("train", "frame").subset(torch.arange(400))
    from xai_feedback.functional import masks_to_maps
    from xai_feedback.hooks import CAMHook

    def frame_energy(model: torch.nn.Module) -> float:
        with CAMHook(model, eval_mode=True) as hook:
            maps = hook.maps(model(data.images), all_classes=True)
        cover = masks_to_maps(data.masks, tuple(maps.shape[-2:]))[:, None]
        return float((maps * cover).pow(2).sum() / maps.pow(2).sum())

    shares = []
    for lam in (0.0, 100.0):
        g = torch.Generator().manual_seed(0)
        model = GAPNet(width=8, generator=g)
        fit(model, data, epochs=3, generator=g, objective=cam_penalty_objective(MaskPenalty(), lam))
        shares.append(frame_energy(model))
    assert shares[1] < 0.5 * shares[0]


def test_clear_errors() -> None:
    with pytest.raises(RangeError, match="`sigma` must be > 0"):
        CenterPenalty(sigma=0.0)
    with pytest.raises(RangeError, match="`classes` must be one of"):
        CenterPenalty(classes="some")
    with pytest.raises(ShapeError, match=r"`maps` must have shape \(B, h, w\) or \(B, K, h, w\)"):
        CenterPenalty()(torch.rand(7, 7))
    with pytest.raises(MissingInputError, match="`target` is required"):
        CenterPenalty(classes="target")(torch.rand(2, 10, 7, 7))
    with pytest.raises(ShapeError, match="`target`"):
        CenterPenalty(classes="target")(torch.rand(2, 10, 7, 7), target=torch.tensor([1]))
    bad = torch.rand(2, 10, 7, 7)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(RangeError, match="`maps` must be finite, got 1 NaN"):
        CenterPenalty()(bad)
    with pytest.raises(RangeError, match="`maps` must be finite"):
        MaskPenalty()(bad, masks=torch.zeros(2, 28, 28))
    with pytest.raises(ValueError, match="require grad"):
        RRRPenalty()(torch.rand(1, 10), torch.rand(1, 1, 4, 4), torch.ones(1, 4, 4))


# --- RobustViT (Chefer, Schwartz & Wolf 2022) ------------------------------------------------


def _robustvit_reference(
    relevance: torch.Tensor, seg: torch.Tensor, bg: float = 2.0, fg: float = 0.3
) -> torch.Tensor:
    """hila-chefer/RobustViT's computation re-typed: upscale x scale, min-max, two MSEs."""
    scale = seg.shape[-1] // relevance.shape[-1]
    r = torch.nn.functional.interpolate(relevance[:, None], scale_factor=scale, mode="bilinear")
    flat = r.reshape(r.shape[0], -1)
    low, high = flat.min(1, keepdim=True)[0], flat.max(1, keepdim=True)[0]
    r = ((flat - low) / (high - low)).reshape(r.shape)[:, 0]
    reverse = 1 - seg
    mse = torch.nn.MSELoss()
    return bg * mse(r * reverse, torch.zeros_like(r)) + fg * mse(r * seg, seg)


def test_robustvit_penalty_hand_values() -> None:
    from xai_feedback.losses import RobustViTPenalty

    # maps already at the masks' size and in [0, 1]: min-max leaves them as they are
    maps = torch.tensor([[[0.0, 1.0], [0.5, 0.25]]])
    fg = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    # background cells (0,0)=0 and (1,1)=0.25: (0 + 0.0625) / 4; foreground: (0 + 0.25) / 4
    expected = 2.0 * 0.0625 / 4 + 0.3 * 0.25 / 4
    assert float(RobustViTPenalty()(maps, masks=fg)) == pytest.approx(expected, rel=1e-6)
    weighted = RobustViTPenalty(background=1.0, foreground=0.0)(maps, masks=fg)
    assert float(weighted) == pytest.approx(0.0625 / 4, rel=1e-6)
    # min-max: a map scaled and shifted gives the same penalty
    assert float(RobustViTPenalty()(3 * maps - 1, masks=fg)) == pytest.approx(expected, rel=1e-5)


def test_robustvit_penalty_equals_the_reference_pipeline() -> None:
    from xai_feedback.losses import RobustViTPenalty

    g = torch.Generator().manual_seed(0)
    relevance = torch.rand(3, 4, 4, generator=g, dtype=torch.float64)
    seg = (torch.rand(3, 16, 16, generator=g) > 0.6).double()
    got = RobustViTPenalty()(relevance, masks=seg)
    torch.testing.assert_close(got, _robustvit_reference(relevance, seg), rtol=1e-6, atol=1e-9)
    # all-class maps: the target's are taken
    every = torch.rand(3, 5, 4, 4, generator=g, dtype=torch.float64)
    target = torch.tensor([4, 0, 2])
    got = RobustViTPenalty()(every, target=target, masks=seg)
    torch.testing.assert_close(got, _robustvit_reference(every[torch.arange(3), target], seg))
    with pytest.raises(MissingInputError, match="masks"):
        RobustViTPenalty()(relevance)
    with pytest.raises(MissingInputError, match="target"):
        RobustViTPenalty()(every, masks=seg)
    with pytest.raises(RangeError, match="background"):
        RobustViTPenalty(background=-1.0)


def test_robustvit_penalty_gradcheck() -> None:
    from xai_feedback.losses import RobustViTPenalty

    seg = torch.zeros(2, 8, 8)
    seg[:, 2:6, 2:6] = 1
    gradcheck64(lambda m: RobustViTPenalty()(m, masks=seg), [torch.rand(2, 4, 4)])


def test_robustvit_classification_loss_hand_values() -> None:
    import math

    from xai_feedback.losses import robustvit_classification_loss

    z = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0]], requires_grad=True)
    # each row's own argmax: -log softmax(z)[argmax], averaged
    row0 = -(2.0 - math.log(math.exp(2.0) + 1.0 + math.exp(1.0)))
    row1 = -(3.0 - math.log(2.0 + math.exp(3.0)))
    assert float(robustvit_classification_loss(z.detach())) == pytest.approx(
        (row0 + row1) / 2, rel=1e-6
    )
    half = -(1.0 - math.log(math.exp(1.0) + 1.0 + math.exp(0.5)))  # temperature 2, row 0
    got = robustvit_classification_loss(z[:1].detach(), temperature=2.0)
    assert float(got) == pytest.approx(half, rel=1e-6)
    (grad,) = torch.autograd.grad(robustvit_classification_loss(z), [z])
    assert float(grad[0, 0]) < 0  # raises the predicted logit
    with pytest.raises(RangeError, match="temperature"):
        robustvit_classification_loss(z, temperature=0.0)
