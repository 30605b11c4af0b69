"""The XIL typology's peer methods (RRR-G, HINT, RBR, CDEP) against hand computations.

Every reference here is worked out by hand (NumPy or closed forms), not by calling the
kernels; the "ill-posed" tests demonstrate the properties the docstrings state.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from xai_feedback import models
from xai_feedback.errors import LayerError, MissingInputError, RangeError, ShapeError
from xai_feedback.functional import (
    cdep_penalty,
    contextual_decomposition,
    decompose_module,
    hint_penalty,
    minmax_normalize,
    rbr_penalty,
    rrr_g_penalty,
    split_bias,
)
from xai_feedback.losses import (
    CDEPPenalty,
    LossSchedule,
    decomposition_chain,
    default_object_masks,
)
from xai_feedback.objectives import (
    cdep_objective,
    hint_objective,
    rbr_objective,
    rrr_g_objective,
)
from xai_feedback.training import Batch

EPS = 1e-6  # the typology's constant in norm_saliencies_fast

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


class PenaltyOnly(LossSchedule):
    """Weights (0, 1): the objective's loss is the penalty alone."""

    def weights(self, epoch: int, total_epochs: int) -> tuple[float, float]:
        return 0.0, 1.0


class SimpleConvNet(models.SimpleConvNet):
    """The typology's SimpleConvNet as its code runs it: the forward flattens with a view, so
    the decomposition must follow a chain whose flatten is no module call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.max_pool1(self.relu1(self.conv1(x)))
        x = self.max_pool2(self.relu2(self.last_conv(x)))
        x = x.view(-1, 4 * 4 * 50)
        logits: torch.Tensor = self.fc2(self.relu3(self.fc1(x)))
        return logits


def _minmax_by_hand(m: np.ndarray) -> np.ndarray:
    lo = m.min()
    return (m - lo) / ((m - lo).max() + EPS)


# --- min-max normalization and the RRR-G / HINT kernels ----------------------------------


def test_minmax_normalize_by_hand() -> None:
    maps = torch.tensor([[[-2.0, 0.0], [1.0, 6.0]], [[1.0, 1.0], [1.0, 3.0]]], dtype=torch.float64)
    got = minmax_normalize(maps).numpy()
    for b in range(2):
        np.testing.assert_allclose(got[b], _minmax_by_hand(maps[b].numpy()), rtol=1e-14)


def test_minmax_is_blind_to_scale_and_zero_on_constant_maps() -> None:
    """Ill-posed, property 1 and 3: positive rescaling changes nothing; a constant map is 0."""
    m = torch.tensor([[[0.3, -1.0], [2.0, 0.5]]], dtype=torch.float64)
    np.testing.assert_allclose(minmax_normalize(1000 * m), minmax_normalize(m), atol=1e-6)
    const = torch.full((1, 3, 3), 7.0, dtype=torch.float64, requires_grad=True)
    out = minmax_normalize(const)
    assert torch.equal(out.detach(), torch.zeros(1, 3, 3, dtype=torch.float64))
    # near a constant map, the derivative is of order 1/eps
    (grad,) = torch.autograd.grad(out[0, 1, 1], const)
    assert grad.abs().max() > 0.5 / EPS


def test_rrr_g_penalty_by_hand_with_bilinear_block_means() -> None:
    """4x4 masks to a 2x2 map: bilinear without anti-aliasing reads each 2x2 block's mean."""
    maps = torch.tensor([[[1.0, -3.0], [2.0, 5.0]], [[0.0, 4.0], [1.0, 1.0]]], dtype=torch.float64)
    masks = torch.zeros(2, 4, 4, dtype=torch.float64)
    masks[0, :2, :2] = 1  # one full block
    masks[0, 2, 3] = 1  # a quarter of the bottom-right block
    masks[1, :2, 2:] = 1
    total = 0.0
    for b in range(2):
        n = _minmax_by_hand(maps[b].numpy())
        block = masks[b].numpy().reshape(2, 2, 2, 2).mean(axis=(1, 3))
        total += float(((block * n) ** 2).sum())
    got = rrr_g_penalty(maps, masks)
    assert math.isclose(float(got), total, rel_tol=1e-12)
    assert math.isclose(float(rrr_g_penalty(maps, masks, reduction="mean")), total / 2)


def test_rrr_g_corner_patch_28_to_8_is_one_cell() -> None:
    """The published downsampling turns a 4x4 corner decoy into exactly one corner cell."""
    maps = torch.zeros(4, 8, 8)
    maps[:, 3, 3] = 1.0  # the maximum elsewhere: the corner cell's normalized value is 0
    corners = [(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(24, 28))]
    corners += [(slice(24, 28), slice(0, 4)), (slice(24, 28), slice(24, 28))]
    cells = [(0, 0), (0, 7), (7, 0), (7, 7)]
    masks = torch.zeros(4, 28, 28)
    for b, (rows, cols) in enumerate(corners):
        masks[b, rows, cols] = 1
    assert float(rrr_g_penalty(maps, masks)) == 0.0
    for b, (i, j) in enumerate(cells):
        maps[b, i, j] = 2.0  # the corner cell is now the maximum: normalized 1
    expected = 4 * (1 / (1 + EPS / 2)) ** 2  # range 2, cell value 2
    assert math.isclose(float(rrr_g_penalty(maps, masks)), expected, rel_tol=1e-6)


def test_rrr_g_shortcut_as_negative_evidence_costs_nothing() -> None:
    """Ill-posed, property 2: the image's most negative cell normalizes to 0."""
    masks = torch.zeros(1, 4, 4)
    masks[0, :2, :2] = 1
    positive = torch.tensor([[[100.0, 1.0], [0.0, 1.0]]])
    negative = torch.tensor([[[-100.0, 1.0], [0.0, 1.0]]])
    assert float(rrr_g_penalty(positive, masks)) > 0.99
    assert float(rrr_g_penalty(negative, masks)) == 0.0


def test_hint_penalty_by_hand_with_nearest_upsampling() -> None:
    maps = torch.tensor([[[1.0, 3.0], [-1.0, 0.0]]], dtype=torch.float64)
    obj = torch.zeros(1, 4, 4, dtype=torch.float64)
    obj[0, :2, 2:] = 1
    obj[0, 3, 3] = 1
    n = _minmax_by_hand(maps[0].numpy())
    up = np.kron(n, np.ones((2, 2)))  # nearest, factor 2
    expected = float(((up - obj[0].numpy()) ** 2).sum())
    assert math.isclose(float(hint_penalty(maps, obj)), expected, rel_tol=1e-12)


def test_default_object_masks_leave_the_shortcut_out() -> None:
    x = torch.zeros(1, 2, 3, 3)
    x[0, 0, 0, 0] = 0.4  # shortcut pixel (nonzero, masked)
    x[0, 1, 1, 1] = 0.2  # object pixel in the second channel
    masks = torch.zeros(1, 3, 3, dtype=torch.bool)
    masks[0, 0, 0] = True
    expected = torch.zeros(1, 3, 3, dtype=torch.bool)
    expected[0, 1, 1] = True
    assert torch.equal(default_object_masks(x, masks), expected)
    with pytest.raises(MissingInputError, match="masks"):
        default_object_masks(x, None)


# --- Grad-CAM objectives on a model small enough to do by hand ---------------------------


def _tiny_cam_model() -> nn.Sequential:
    """conv 1->2, k2 s2 (4x4 -> 2x2), flatten, linear 8->3: Grad-CAM is closed-form."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 2, 2, stride=2), nn.Flatten(), nn.Linear(8, 3))
    return net.double()


def _grad_cam_by_hand(net: nn.Sequential, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    w = net[0].weight.detach().numpy()  # (2, 1, 2, 2)
    b = net[0].bias.detach().numpy()
    head = net[2].weight.detach().numpy().reshape(3, 2, 2, 2)  # class, channel, h, w
    maps = []
    for n in range(x.shape[0]):
        acts = np.zeros((2, 2, 2))
        for c in range(2):
            for i in range(2):
                for j in range(2):
                    patch = x[n, 0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
                    acts[c, i, j] = (w[c, 0] * patch).sum() + b[c]
        alpha = head[target[n]].mean(axis=(1, 2))  # dy/dA averaged over cells
        maps.append((alpha[:, None, None] * acts).sum(axis=0))
    return np.stack(maps)


def _tiny_batch() -> Batch:
    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64)
    x[0, 0, 3, 0] = 0.0  # a zero pixel: not object
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True
    masks[2, :2, :2] = False
    masks[2, 2:, 2:] = True
    return Batch(x, torch.tensor([0, 2, 1]), masks, epoch=0, step=0, total_epochs=1)


def test_rrr_g_objective_by_hand() -> None:
    net, batch = _tiny_cam_model(), _tiny_batch()
    loss, logits = rrr_g_objective(PenaltyOnly())(net, batch)
    pred = logits.detach().argmax(1).numpy()
    maps = _grad_cam_by_hand(net, batch.images.numpy(), pred)
    total = 0.0
    for n in range(3):
        block = batch.masks[n].double().numpy().reshape(2, 2, 2, 2).mean(axis=(1, 3))
        total += float(((block * _minmax_by_hand(maps[n])) ** 2).sum())
    assert math.isclose(float(loss), total, rel_tol=1e-10)
    # with the cross-entropy and a weight
    full, _ = rrr_g_objective(10.0)(net, batch)
    ce = float(nn.functional.cross_entropy(logits, batch.labels))
    assert math.isclose(float(full), ce + 10 * total, rel_tol=1e-10)


def test_rrr_g_trains_only_through_the_activations_as_published() -> None:
    """captum's Grad-CAM weights are constants: the head after the layer gets no gradient."""
    net, batch = _tiny_cam_model(), _tiny_batch()
    loss, _ = rrr_g_objective(PenaltyOnly())(net, batch)
    loss.backward()
    assert net[2].weight.grad is not None and net[2].weight.grad.abs().max() == 0
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().max() > 0


def test_rrr_g_second_order_gradient_matches_finite_differences() -> None:
    net, batch = _tiny_cam_model(), _tiny_batch()
    objective = rrr_g_objective(PenaltyOnly(), second_order=True)
    loss, _ = objective(net, batch)
    (grad,) = torch.autograd.grad(loss, net[2].weight)
    h = 1e-6
    for idx in [(0, 0), (1, 5), (2, 3)]:
        with torch.no_grad():
            net[2].weight[idx] += h
        up = float(objective(net, batch)[0])
        with torch.no_grad():
            net[2].weight[idx] -= 2 * h
        down = float(objective(net, batch)[0])
        with torch.no_grad():
            net[2].weight[idx] += h
        assert math.isclose(float(grad[idx]), (up - down) / (2 * h), rel_tol=1e-5, abs_tol=1e-8)


def test_hint_objective_by_hand_true_class_and_object_rule() -> None:
    net, batch = _tiny_cam_model(), _tiny_batch()
    loss, _ = hint_objective(PenaltyOnly())(net, batch)
    maps = _grad_cam_by_hand(net, batch.images.numpy(), batch.labels.numpy())
    total = 0.0
    for n in range(3):
        obj = (batch.images[n, 0].numpy() > 0) & ~batch.masks[n].numpy()
        up = np.kron(_minmax_by_hand(maps[n]), np.ones((2, 2)))
        total += float(((up - obj) ** 2).sum())
    assert math.isclose(float(loss), total, rel_tol=1e-10)
    # the user's own object rule
    rule = lambda images, masks: torch.ones(images.shape[0], 4, 4)  # noqa: E731
    loss_all, _ = hint_objective(PenaltyOnly(), object_masks=rule)(net, batch)
    total_all = sum(
        float(((np.kron(_minmax_by_hand(maps[n]), np.ones((2, 2))) - 1) ** 2).sum())
        for n in range(3)
    )
    assert math.isclose(float(loss_all), total_all, rel_tol=1e-10)


def test_default_layer_is_the_last_conv_of_a_plain_cnn() -> None:
    torch.manual_seed(0)
    net = SimpleConvNet()
    x = torch.rand(4, 1, 28, 28)
    masks = torch.zeros(4, 28, 28, dtype=torch.bool)
    masks[:, :4, :4] = True
    batch = Batch(x, torch.tensor([1, 2, 3, 4]), masks, 0, 0, 1)
    values = [
        float(rrr_g_objective(10.0, layer=layer)(net, batch)[0])
        for layer in (None, "last_conv", net.last_conv)
    ]
    assert values[0] == values[1] == values[2]
    assert float(rrr_g_objective(10.0, layer="conv1")(net, batch)[0]) != values[0]
    no_conv = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(LayerError, match=r"no nn\.Conv2d"):
        rrr_g_objective(1.0)(no_conv, batch)


def test_peer_objectives_need_masks() -> None:
    net, batch = _tiny_cam_model(), _tiny_batch()
    bare = Batch(batch.images, batch.labels, None, 0, 0, 1)
    for objective in (rrr_g_objective(), hint_objective(), rbr_objective(), cdep_objective()):
        with pytest.raises(MissingInputError, match="masks"):
            objective(net, bare)


def test_shape_errors() -> None:
    with pytest.raises(ShapeError, match="masks"):
        rrr_g_penalty(torch.zeros(2, 2, 2), torch.zeros(3, 4, 4))
    with pytest.raises(ShapeError, match="object_masks"):
        hint_penalty(torch.zeros(2, 2, 2), torch.zeros(2, 4))
    with pytest.raises(RangeError, match="reduction"):
        rrr_g_penalty(torch.zeros(1, 2, 2), torch.zeros(1, 4, 4), reduction="max")


# --- RBR ---------------------------------------------------------------------------------


def _rbr_net(u: list[float], v: list[float]) -> nn.Sequential:
    """x (2 pixels) -> h = u.x -> z = v h: RBR in closed form."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 1, bias=False), nn.Linear(1, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([u]))
        net[2].weight.copy_(torch.tensor([v]).T)
    return net.double()


def _rbr_by_hand(
    u: np.ndarray, v: np.ndarray, x: np.ndarray, y: np.ndarray, m: np.ndarray
) -> float:
    """s = sum of dCE/dtheta = (1/B) sum_b delta_b (x_b1 + x_b2); its and RRR's x-gradients."""
    batch = x.shape[0]
    total = 0.0
    for b in range(batch):
        z = v * (u @ x[b])
        p = np.exp(z - z.max())
        p /= p.sum()
        onehot = np.eye(2)[y[b]]
        delta = ((p - onehot) * v).sum()
        var = (p * v**2).sum() - (p * v).sum() ** 2
        ds = (u * var * x[b].sum() + delta) / batch
        ig = u * (v.sum() - 2 * (p * v).sum())
        total += float(((m[b] * ds * ig) ** 2).sum())
    return total


def test_rbr_penalty_by_hand() -> None:
    net = _rbr_net([0.7, -1.3], [1.5, -0.4])
    x = torch.tensor([[[[0.9, 0.2]]], [[[-0.5, 1.1]]]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    m = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]], dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    got = rbr_penalty(net(xr), y, xr, m, list(net.parameters()))
    u_net = net[1].weight.detach().numpy()[0]  # the weights as stored (float32-rounded)
    v_net = net[2].weight.detach().numpy()[:, 0]
    expected = _rbr_by_hand(
        u_net, v_net, x.reshape(2, 2).numpy(), y.numpy(), m.reshape(2, 2).numpy()
    )
    assert math.isclose(float(got), expected, rel_tol=1e-10)
    # the objective: same value with the penalty alone
    batch = Batch(x, y, m, 0, 0, 1)
    assert math.isclose(float(rbr_objective(PenaltyOnly())(net, batch)[0]), expected, rel_tol=1e-10)


def test_rbr_gradient_matches_finite_differences() -> None:
    net = _rbr_net([0.7, -1.3], [1.5, -0.4])
    x = torch.tensor([[[[0.9, 0.2]]], [[[-0.5, 1.1]]]], dtype=torch.float64)
    batch = Batch(x, torch.tensor([0, 1]), torch.ones(2, 1, 2, dtype=torch.float64), 0, 0, 1)
    objective = rbr_objective(PenaltyOnly())
    (grad,) = torch.autograd.grad(objective(net, batch)[0], net[1].weight)
    h = 1e-6
    for j in range(2):
        with torch.no_grad():
            net[1].weight[0, j] += h
        up = float(objective(net, batch)[0])
        with torch.no_grad():
            net[1].weight[0, j] -= 2 * h
        down = float(objective(net, batch)[0])
        with torch.no_grad():
            net[1].weight[0, j] += h
        assert math.isclose(float(grad[0, j]), (up - down) / (2 * h), rel_tol=1e-5)


def test_rbr_is_zero_for_a_linear_classifier() -> None:
    """Ill-posed: the last layer's summed gradient is 0 (the logit gradient sums to 0)."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).double()
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (6,))
    value = rbr_penalty(lin(x), y, x, torch.ones(6, 4, 4), list(lin.parameters()))
    assert abs(float(value)) < 1e-25
    # while RRR's input gradient on the same region is far from 0
    (ig,) = torch.autograd.grad(torch.log_softmax(lin(x), 1).sum(), x)
    assert float(ig.pow(2).sum()) > 1e-3


def test_rbr_weight_depends_on_the_batch_size() -> None:
    """Ill-posed: the batch-mean cross-entropy gives each image a 1/B^2 term."""
    net = _rbr_net([0.7, -1.3], [1.5, -0.4])
    x = torch.tensor([[[[0.9, 0.2]]], [[[-0.5, 1.1]]]], dtype=torch.float64)
    y, m = torch.tensor([0, 1]), torch.ones(2, 1, 2, dtype=torch.float64)
    once = float(rbr_objective(PenaltyOnly())(net, Batch(x, y, m, 0, 0, 1))[0])
    twice = Batch(torch.cat([x, x]), torch.cat([y, y]), torch.cat([m, m]), 0, 0, 1)
    assert math.isclose(float(rbr_objective(PenaltyOnly())(net, twice)[0]), once / 2, rel_tol=1e-10)


# --- contextual decomposition and CDEP ---------------------------------------------------


def test_split_bias_by_hand() -> None:
    rel, irrel = split_bias(torch.tensor([2.0, 0.0, -1.0]), torch.tensor([-1.0, 0.0, 3.0]), 3.0)
    assert torch.allclose(rel, torch.tensor([2 + 2.0, 1.5, -1 + 0.75]), atol=1e-6)
    assert torch.allclose(irrel, torch.tensor([-1 + 1.0, 1.5, 3 + 2.25]), atol=1e-6)


def test_relu_and_maxpool_rules_by_hand() -> None:
    rel = torch.tensor([[[[1.0, -4.0], [0.5, 2.0]]]])
    irrel = torch.tensor([[[[0.0, 6.0], [0.0, -1.0]]]])
    # max of rel + irrel = [1, 2, 0.5, 1] is 2, at (0, 1): each part is read there
    r, i = decompose_module(nn.MaxPool2d(2), rel, irrel)
    assert (float(r), float(i)) == (-4.0, 6.0)
    r, i = decompose_module(nn.ReLU(), rel, irrel)
    assert torch.equal(r, torch.tensor([[[[1.0, 0.0], [0.5, 2.0]]]]))
    assert torch.equal(i, torch.tensor([[[[0.0, 2.0], [0.0, -1.0]]]]))


def test_cdep_by_hand_on_a_two_layer_net() -> None:
    """Worked by hand: rel = 3.75, irrel = 0.75 (sum 4.5, the output); P = sigmoid(3)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0]]))
        net[1].bias.copy_(torch.tensor([1.0, -1.0]))
        net[3].weight.copy_(torch.tensor([[1.0, 1.0]]))
        net[3].bias.copy_(torch.tensor([0.5]))
    x = torch.tensor([[[[2.0, 1.0]]]])
    m = torch.tensor([[[1.0, 0.0]]])
    rel, irrel = CDEPPenalty().decompose(net, x, m)
    assert math.isclose(float(rel), 3.75, rel_tol=1e-6)
    assert math.isclose(float(irrel), 0.75, rel_tol=1e-6)
    penalty = CDEPPenalty()(net, x, m)
    assert math.isclose(float(penalty), 1 / (1 + math.exp(-3.0)), rel_tol=1e-6)


def test_cd_of_a_linear_model_is_the_masked_inputs_output() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, bias=False),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(3 * 3 * 3, 4, bias=False),
    ).double()
    x = torch.randn(5, 2, 8, 8, dtype=torch.float64)
    m = (torch.rand(5, 8, 8) > 0.6).double()
    rel, irrel = CDEPPenalty().decompose(net.train(), x, m)
    with torch.no_grad():
        net.eval()
        assert torch.allclose(rel, net(m[:, None] * x), atol=1e-12)
        assert torch.allclose(irrel, net((1 - m[:, None]) * x), atol=1e-12)


class _Chain(nn.Module):
    """A forward that is a plain chain, not an nn.Sequential, with every supported kind."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.drop = nn.Dropout2d(0.3)
        self.relu2 = nn.ReLU()
        self.avg = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(2)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(24, 7)
        self.relu3 = nn.ReLU()
        self.head = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn(self.conv(x))))
        x = self.gap(self.avg(self.relu2(self.drop(self.conv2(x)))))
        return self.head(self.relu3(self.fc(self.flat(x))))


def test_cd_invariant_at_every_layer() -> None:
    """rel + irrel equals each layer's true (eval-mode) output, layer after layer."""
    torch.manual_seed(2)
    net = _Chain().double()
    with torch.no_grad():  # running statistics that are not the identity
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    m = torch.zeros(3, 12, 12, dtype=torch.float64)
    m[:, :4, :4] = 1
    outputs: list[torch.Tensor] = []
    hooks = [
        mod.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach().clone()))
        for mod in net.children()
    ]
    net.eval()
    with torch.no_grad():
        final = net(x)
    for h in hooks:
        h.remove()
    net.train()
    chain = decomposition_chain(net, x)
    assert [name for name, _, _ in chain] == [name for name, _ in net.named_children()]
    rel, irrel = m[:, None] * x, (1 - m[:, None]) * x
    for (_, module, shape), true in zip(chain, outputs, strict=True):
        rel, irrel = rel.reshape(3, *shape), irrel.reshape(3, *shape)
        rel, irrel = decompose_module(module, rel, irrel)
        assert torch.allclose(rel + irrel, true, rtol=0, atol=1e-12)
    assert torch.allclose(rel + irrel, final, rtol=0, atol=1e-12)
    r2, i2 = contextual_decomposition(
        [mod for _, mod, _ in chain], x, m, shapes=[s for _, _, s in chain]
    )
    assert torch.equal(r2, rel) and torch.equal(i2, irrel)
    assert net.training and net.bn.training  # the trace restored every flag


def test_cd_invariant_on_the_typology_net_and_gradients_flow() -> None:
    torch.manual_seed(0)
    net = SimpleConvNet().double()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    m = torch.zeros(4, 28, 28, dtype=torch.bool)
    m[:, 24:, :4] = True
    penalty = CDEPPenalty()
    rel, irrel = penalty.decompose(net, x, m)
    with torch.no_grad():
        assert torch.allclose(rel + irrel, net(x), rtol=0, atol=1e-10)
    cdep_penalty(rel, irrel).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_cdep_objective_value() -> None:
    torch.manual_seed(0)
    net = SimpleConvNet()
    x = torch.rand(4, 1, 28, 28)
    m = torch.zeros(4, 28, 28, dtype=torch.bool)
    m[:, :4, :4] = True
    batch = Batch(x, torch.tensor([0, 1, 2, 3]), m, 0, 0, 1)
    loss, logits = cdep_objective(2.0)(net, batch)
    rel, irrel = CDEPPenalty().decompose(net, x, m)
    ce = nn.functional.cross_entropy(logits, batch.labels)
    by_hand = float(ce) + 2.0 * float(torch.sigmoid(rel - irrel).mean())
    assert math.isclose(float(loss), by_hand, rel_tol=1e-6)


def test_cdep_is_not_symmetric_in_the_sign_of_the_shortcut() -> None:
    """Ill-posed: the same decisive margin costs ~0.13 as negative evidence, ~0.63 positive."""
    x, m = torch.tensor([[[[1.0, 1.0]]]]), torch.tensor([[[1.0, 0.0]]])

    def penalty(weight: list[list[float]]) -> float:
        net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
        with torch.no_grad():
            net[1].weight.copy_(torch.tensor(weight))
        return float(CDEPPenalty()(net, x, m))

    down = penalty([[0.0, 1.0], [-20.0, 1.0]])  # the shortcut pushes class 1 down by 20
    up = penalty([[20.0, 1.0], [0.0, 1.0]])  # the shortcut pushes class 0 up by 20
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    assert math.isclose(down, (sig(-1) + sig(-21)) / 2, rel_tol=1e-6)
    assert math.isclose(up, (sig(19) + sig(-1)) / 2, rel_tol=1e-6)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.relu(self.conv(x) + x)))


class _FunctionalRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nn.functional.gelu(self.conv(x)).flatten(1))


def test_cdep_errors_name_what_breaks_the_chain() -> None:
    x, m = torch.rand(2, 1, 4, 4), torch.zeros(2, 4, 4)
    with pytest.raises(LayerError, match="Sigmoid"):
        CDEPPenalty()(nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.Sigmoid()), x, m)
    with pytest.raises(LayerError, match=r"plain chain.*'relu'"):
        CDEPPenalty()(_Residual(), x, m)
    with pytest.raises(LayerError, match=r"plain chain.*'fc'"):
        CDEPPenalty()(_FunctionalRelu(), x, m)
    tail = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(LayerError, match="after"):
        CDEPPenalty()(_Softmaxed(tail), x, m)
    no_stats = nn.Sequential(nn.BatchNorm2d(1, track_running_stats=False), nn.Flatten())
    with pytest.raises(LayerError, match="running statistics"):
        CDEPPenalty()(no_stats, x, m)
    with pytest.raises(ShapeError, match="masks"):
        CDEPPenalty()(tail, x, torch.zeros(2, 3, 3))


class _Softmaxed(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).softmax(1)


def test_every_peer_objective_trains_the_typology_net() -> None:
    """The interface the benchmark calls: each objective, its weight, one Adam step."""
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    x[x < 0.5] = 0
    masks = torch.zeros(4, 28, 28, dtype=torch.bool)
    masks[:, :4, 24:] = True
    x[:, :, :4, 24:] = 0.6
    batch = Batch(x, torch.tensor([0, 3, 5, 9]), masks, 0, 0, 1)
    objectives = [
        rrr_g_objective(10.0),
        hint_objective(1e-5),
        rbr_objective(1e6),
        cdep_objective(2e6),
    ]
    for objective in objectives:
        net = SimpleConvNet()
        before = [p.detach().clone() for p in net.parameters()]
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        loss, logits = objective(net, batch)
        assert logits.shape == (4, 10) and torch.isfinite(loss)
        loss.backward()
        opt.step()
        assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_masks_out_of_range_are_refused() -> None:
    """A 0/255 mask read from an 8-bit image is a RangeError, not a silently wrong loss."""
    x = torch.rand(2, 1, 4, 4)
    bad = torch.zeros(2, 4, 4, dtype=torch.uint8)
    bad[:, :2, :2] = 255
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(RangeError, match="masks"):
        CDEPPenalty()(net, x, bad)
    with pytest.raises(RangeError, match="masks"):
        default_object_masks(x, bad)
    with pytest.raises(RangeError, match="masks"):
        rrr_g_penalty(torch.rand(2, 2, 2), bad.float())
