"""RRR (Ross et al. 2017) against its formula worked by hand, and the mask penalty's dilation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xai_feedback.errors import DTypeError, RangeError
from xai_feedback.functional.penalties import (
    dilate_masks,
    input_gradient_penalty,
    mask_penalty,
    masks_to_maps,
)
from xai_feedback.losses import MaskPenalty, RRRPenalty
from xai_feedback.objectives import rrr_objective
from xai_feedback.training import Batch


def _tiny_mlp(seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(5, 6))  # hidden x input
    a = rng.normal(size=5)
    v = rng.normal(size=(3, 5))  # classes x hidden
    c = rng.normal(size=3)
    x = rng.normal(size=(4, 6))  # batch x input (a 1x2x3 "image")
    mask = (rng.random(size=(4, 6)) > 0.5).astype(float)
    return u, a, v, c, x, mask


def _ross_by_hand(u, a, v, c, x, mask):  # type: ignore[no-untyped-def]
    """Ross's right-reasons term: sum_n || A_n * d/dx_n sum_k log p_nk ||^2, in NumPy."""
    total = 0.0
    k = v.shape[0]
    for n in range(x.shape[0]):
        h = np.tanh(u @ x[n] + a)
        z = v @ h + c
        p = np.exp(z - z.max())
        p /= p.sum()
        dz_dx = v @ np.diag(1 - h**2) @ u  # (K, D)
        grad = (np.ones(k) - k * p) @ dz_dx  # d/dx sum_k (z_k - logsumexp z)
        total += float(((mask[n] * grad) ** 2).sum())
    return total / x.shape[0]


def _torch_mlp(u, a, v, c):  # type: ignore[no-untyped-def]
    lin1 = torch.nn.Linear(6, 5).double()
    lin2 = torch.nn.Linear(5, 3).double()
    with torch.no_grad():
        lin1.weight.copy_(torch.from_numpy(u))
        lin1.bias.copy_(torch.from_numpy(a))
        lin2.weight.copy_(torch.from_numpy(v))
        lin2.bias.copy_(torch.from_numpy(c))
    return torch.nn.Sequential(torch.nn.Flatten(), lin1, torch.nn.Tanh(), lin2)


def test_input_gradient_penalty_matches_ross_formula_on_a_tiny_mlp() -> None:
    u, a, v, c, x, mask = _tiny_mlp()
    model = _torch_mlp(u, a, v, c)
    images = torch.from_numpy(x).reshape(4, 1, 2, 3).requires_grad_(True)
    masks = torch.from_numpy(mask).reshape(4, 2, 3)
    value = input_gradient_penalty(model(images), images, masks)
    assert float(value.detach()) == pytest.approx(_ross_by_hand(u, a, v, c, x, mask), rel=1e-10)
    assert float(RRRPenalty()(model(images), images, masks).detach()) == pytest.approx(
        float(value.detach())
    )


def test_input_gradient_penalty_trains_by_double_backprop() -> None:
    """d(penalty)/d(weights), by autograd, equals central finite differences of the formula."""
    u, a, v, c, x, mask = _tiny_mlp(1)
    model = _torch_mlp(u, a, v, c)
    images = torch.from_numpy(x).reshape(4, 1, 2, 3).requires_grad_(True)
    masks = torch.from_numpy(mask).reshape(4, 2, 3)
    input_gradient_penalty(model(images), images, masks).backward()
    grad_u = model[1].weight.grad
    assert grad_u is not None
    eps = 1e-6
    for i, j in [(0, 0), (2, 3), (4, 5)]:
        up, down = u.copy(), u.copy()
        up[i, j] += eps
        down[i, j] -= eps
        fd = (_ross_by_hand(up, a, v, c, x, mask) - _ross_by_hand(down, a, v, c, x, mask)) / (
            2 * eps
        )
        assert float(grad_u[i, j]) == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_rrr_objective_is_ce_plus_lambda_penalty() -> None:
    u, a, v, c, x, mask = _tiny_mlp(2)
    model = _torch_mlp(u, a, v, c)
    images = torch.from_numpy(x).reshape(4, 1, 2, 3)
    masks = torch.from_numpy(mask).reshape(4, 2, 3)
    labels = torch.tensor([0, 2, 1, 1])
    loss, _ = rrr_objective(None, 7.0)(model, Batch(images, labels, masks, 0, 0, 1))
    logits = model(images)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    expected = float(ce) + 7.0 * _ross_by_hand(u, a, v, c, x, mask)
    assert float(loss) == pytest.approx(expected, rel=1e-10)


def test_dilate_masks_by_hand() -> None:
    m = torch.zeros(1, 6, 6, dtype=torch.bool)
    m[0, 0, :] = True  # top row
    d = dilate_masks(m, 2)
    expected = torch.zeros(1, 6, 6)
    expected[0, :3, :] = 1.0
    assert torch.equal(d, expected)
    assert torch.equal(dilate_masks(m, 0), m.float())
    with pytest.raises(RangeError, match="radius"):
        dilate_masks(m, -1)


def test_frame_mask_at_cam_resolution_covers_only_the_outer_ring() -> None:
    """The diagnosis: a 2 px frame area-downsampled to 14x14 marks only the outermost cells."""
    from xai_feedback.data import confounded_digits

    masks = confounded_digits("train", "frame", size=2, rule="none").masks
    assert masks is not None
    frame = masks[:1]
    cover = masks_to_maps(frame, (14, 14))[0]
    ring = torch.zeros(14, 14)
    ring[[0, -1], :] = 1.0
    ring[:, [0, -1]] = 1.0
    assert torch.equal(cover, ring)
    # dilated by 8 px (half the 16 px receptive field of GAPNet(pools=1)), only the central
    # 4x4 cells (pixels 10-17) are free: every other cell can see the frame
    wide = masks_to_maps(dilate_masks(frame, 8), (14, 14))[0]
    free = wide == 0
    assert int(free.sum()) == 16 and bool(free[5:9, 5:9].all())


def test_mask_penalty_dilation_by_hand() -> None:
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 1, 1] = 2.0  # evidence next to a masked corner pixel
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = True
    assert float(MaskPenalty()(maps, masks=masks)) == 0.0
    # dilation 1 covers cell (1, 1): (1 * 2)^2 / 16 cells
    assert float(MaskPenalty(dilation=1)(maps, masks=masks)) == pytest.approx(4 / 16)
    assert float(mask_penalty(maps, dilate_masks(masks, 1))) == pytest.approx(4 / 16)
    with pytest.raises(RangeError, match="dilation"):
        MaskPenalty(dilation=-1)


def test_rrr_counterexample_objective_evaluates_ross_formula_at_the_probes() -> None:
    from xai_feedback.counterexamples import Counterexamples, counterexamples
    from xai_feedback.objectives import rrr_counterexample_objective

    u, a, v, c, x, mask = _tiny_mlp(3)
    model = _torch_mlp(u, a, v, c)
    images = torch.from_numpy(x).reshape(4, 1, 2, 3)
    masks = torch.from_numpy(mask).reshape(4, 2, 3) > 0.5
    labels = torch.tensor([1, 0, 2, 2])
    probe = Counterexamples(copies=2, generator=torch.Generator().manual_seed(9))
    loss, logits = rrr_counterexample_objective(None, 3.0, probe=probe)(
        model, Batch(images, labels, masks, 0, 0, 1)
    )
    probes = counterexamples(
        images, masks, copies=2, generator=torch.Generator().manual_seed(9)
    ).reshape(8, 6)
    by_hand = _ross_by_hand(u, a, v, c, probes.numpy(), np.tile(mask, (2, 1)))
    ce = torch.nn.functional.cross_entropy(model(images), labels)
    assert float(loss.detach()) == pytest.approx(float(ce.detach()) + 3.0 * by_hand, rel=1e-10)
    assert torch.allclose(logits, model(images))
    # the probes differ from the images inside the mask only, so the penalty differs from
    # plain RRR's (evaluated at the images themselves)
    plain = _ross_by_hand(u, a, v, c, x, mask)
    assert by_hand != pytest.approx(plain, rel=1e-3)


def test_receptive_field_cover_by_hand() -> None:
    from xai_feedback.functional.penalties import receptive_field_cover

    m = torch.zeros(1, 5, 5)
    m[0, :, 0] = 1.0  # left column
    r = receptive_field_cover(m, 3)
    # a 3x3 window centered on column j holds 3 masked pixels if j <= 1 (of 9), except at the
    # top and bottom rows where the window sticks out of the image (2 of 9)
    expected = torch.zeros(5, 5)
    expected[:, :2] = 3 / 9
    expected[[0, -1], :2] = 2 / 9
    assert torch.allclose(r[0], expected)
    assert torch.equal(receptive_field_cover(m, 1), m)
    ones = torch.ones(1, 4, 4)
    assert float(receptive_field_cover(ones, 3)[0, 1, 1]) == pytest.approx(1.0)
    with pytest.raises(RangeError, match="field"):
        receptive_field_cover(m, 0)
    # MaskPenalty(field=) weights cells by the cover
    maps = torch.ones(1, 5, 5)
    expected_penalty = float((expected**2).mean())
    assert float(MaskPenalty(field=3)(maps, masks=m > 0)) == pytest.approx(expected_penalty)


def _jacobian_by_hand(u, a, v, c, x, mask, signs):  # type: ignore[no-untyped-def]
    """(1/B) sum_n || A_n * d/dx_n sum_k s_nk log p_nk ||^2 in NumPy."""
    total = 0.0
    k = v.shape[0]
    for n in range(x.shape[0]):
        h = np.tanh(u @ x[n] + a)
        z = v @ h + c
        p = np.exp(z - z.max())
        p /= p.sum()
        dz_dx = v @ np.diag(1 - h**2) @ u
        dlogp_dx = (np.eye(k) - p[None, :]) @ dz_dx  # row k: d log p_k / dx
        grad = signs[n] @ dlogp_dx
        total += float(((mask[n] * grad) ** 2).sum())
    return total / x.shape[0]


def test_projected_penalty_by_hand_and_its_expectation_is_the_jacobian_norm() -> None:
    import itertools

    from xai_feedback.functional.penalties import projected_input_gradient_penalty

    u, a, v, c, x, mask = _tiny_mlp(4)
    model = _torch_mlp(u, a, v, c)
    images = torch.from_numpy(x).reshape(4, 1, 2, 3).requires_grad_(True)
    masks = torch.from_numpy(mask).reshape(4, 2, 3)
    logits = model(images)
    ones = torch.ones(3, dtype=torch.float64)
    same = projected_input_gradient_penalty(logits, images, masks, ones)
    assert float(same.detach()) == pytest.approx(
        float(input_gradient_penalty(logits, images, masks).detach()), rel=1e-12
    )
    signs = np.array([[1, -1, 1], [-1, -1, 1], [1, 1, -1], [-1, 1, 1]], dtype=float)
    value = projected_input_gradient_penalty(logits, images, masks, torch.from_numpy(signs))
    assert float(value.detach()) == pytest.approx(
        _jacobian_by_hand(u, a, v, c, x, mask, signs), rel=1e-10
    )
    # averaged over all 2^K sign vectors: sum_k ||M * d log p_k / dx||^2 (cross terms cancel)
    frobenius = sum(
        _jacobian_by_hand(u, a, v, c, x, mask, np.tile(np.eye(3)[k], (4, 1))) for k in range(3)
    )
    mean = np.mean(
        [
            float(
                projected_input_gradient_penalty(
                    logits, images, masks, torch.tensor(s, dtype=torch.float64)
                ).detach()
            )
            for s in itertools.product([1.0, -1.0], repeat=3)
        ]
    )
    assert mean == pytest.approx(frobenius, rel=1e-10)


def test_summed_log_probabilities_miss_evidence_moving_between_classes() -> None:
    """The blind spot of Ross's sum: it is zero for a shortcut that trades class evidence."""
    from xai_feedback.functional.penalties import rademacher

    x = torch.zeros(6, 1, 2, 2, requires_grad=True)
    s = x.sum((1, 2, 3))
    logits = torch.stack([s, -s, torch.zeros_like(s)], dim=1)  # z0 up, z1 down: sum fixed
    masks = torch.ones(6, 2, 2)
    p = torch.softmax(logits, 1)[0]  # all 1/3 at x = 0
    assert float(RRRPenalty()(logits, x, masks).detach()) == pytest.approx(0.0, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    signs = rademacher((6, 3), generator=torch.Generator().manual_seed(0))
    value = RRRPenalty("all", generator=g)(logits, x, masks)
    # d/dx sum_k s_k log p_k = s_0 - s_1 - (s_0 + s_1 + s_2) (p_0 - p_1) = s_0 - s_1 per pixel
    per_image = 4 * (signs[:, 0] - signs[:, 1]) ** 2
    assert float(p[0] - p[1]) == pytest.approx(0.0)
    assert float(per_image.mean()) > 0
    assert float(value.detach()) == pytest.approx(float(per_image.mean()))
    with pytest.raises(RangeError, match="outputs"):
        RRRPenalty("target")


class _BNNet(torch.nn.Module):
    """conv -> BatchNorm -> ReLU -> linear, counting its forwards."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3)
        self.fc = torch.nn.Linear(3 * 6 * 6, 4)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        self.bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.5]))
        self.forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _rrr_by_hand(model: torch.nn.Module, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Ross et al.'s penalty (mean over the batch), each image's own input gradient."""
    total = torch.zeros(())
    for b in range(x.shape[0]):  # one image at a time: no batch term can enter
        xb = x[b : b + 1].clone().requires_grad_(True)
        score = torch.log_softmax(model(xb), dim=1).sum()
        (grad,) = torch.autograd.grad(score, xb)
        total = total + (masks[b] * grad[0, 0]).pow(2).sum()
    return total / x.shape[0]


def test_rrr_explains_a_batchnorm_model_with_its_running_statistics() -> None:
    x = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3, 0])
    masks = torch.zeros(5, 6, 6)
    masks[:, :2, :2] = 1.0
    batch = Batch(x, labels, masks, 0, 0, 1)
    model = _BNNet().train()
    loss, logits = rrr_objective(None, 1.0)(model, batch)
    assert model.forwards == 2 and model.bn.training  # the loss's forward, then the penalty's
    ce = torch.nn.functional.cross_entropy(logits, labels)
    model.eval()
    expected = _rrr_by_hand(model, x, masks)
    model.train()
    torch.testing.assert_close(loss - ce, expected, rtol=1e-5, atol=1e-6)
    # the logits are the batch-statistics forward's (the cross-entropy trains as before)
    torch.testing.assert_close(logits, model(x))
    # batch_statistics=True: one forward, and the penalty differs (the batch terms)
    model.forwards = 0
    loss_b, _ = rrr_objective(None, 1.0, batch_statistics=True)(model, batch)
    assert model.forwards == 1
    assert not torch.allclose(loss_b, loss)
    with pytest.raises(DTypeError, match="batch_statistics"):
        rrr_objective(None, 1.0, batch_statistics=1)  # type: ignore[arg-type]


def test_rrr_takes_one_forward_without_batchnorm_in_training() -> None:
    model = _BNNet().eval()
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    masks = torch.ones(3, 6, 6)
    loss, logits = rrr_objective(None, 2.0)(
        model, Batch(x, torch.tensor([0, 1, 2]), masks, 0, 0, 1)
    )
    assert model.forwards == 1
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(loss - ce, 2.0 * _rrr_by_hand(model, x, masks), rtol=1e-5, atol=1e-6)
