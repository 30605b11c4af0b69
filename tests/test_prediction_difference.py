"""The prediction-difference penalty and objective, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xai_feedback.counterexamples import Counterexamples
from xai_feedback.errors import DTypeError, MissingInputError, RangeError, ShapeError
from xai_feedback.functional.penalties import prediction_difference_penalty
from xai_feedback.objectives import prediction_difference_objective
from xai_feedback.training import Batch


def test_penalty_by_hand() -> None:
    # image 0: p = (3/4, 1/4), p~ = (1/2, 1/2); image 1: equal predictions, zero
    logits = torch.tensor([[math.log(3.0), 0.0], [2.0, -1.0]], dtype=torch.float64)
    reference = torch.tensor([[0.0, 0.0], [2.0, -1.0]], dtype=torch.float64)
    kl0 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    value = prediction_difference_penalty(logits, reference)
    assert value.dtype == torch.float64
    assert float(value) == pytest.approx(kl0 / 2, rel=1e-12)


def test_penalty_gradients_by_hand() -> None:
    # d KL(p~ || p) / d logits = p - p~ ; d / d reference = p~ * (log p~ - log p - KL), per image
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    reference = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    prediction_difference_penalty(logits, reference).backward()
    p, q = F.softmax(logits.detach(), 1), F.softmax(reference.detach(), 1)
    kl = (q * (q.log() - p.log())).sum(1, keepdim=True)
    assert logits.grad is not None and reference.grad is not None
    torch.testing.assert_close(logits.grad, (p - q) / 3)
    torch.testing.assert_close(reference.grad, q * (q.log() - p.log() - kl) / 3)


def test_penalty_is_zero_only_for_equal_predictions() -> None:
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    assert float(prediction_difference_penalty(logits, logits + 7.0)) == pytest.approx(0, abs=1e-6)
    assert float(prediction_difference_penalty(logits, logits.flip(1))) > 1e-3


def test_penalty_shape_errors_name_the_argument() -> None:
    with pytest.raises(ShapeError, match="reference"):
        prediction_difference_penalty(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ShapeError, match="logits"):
        prediction_difference_penalty(torch.zeros(2, 3, 1), torch.zeros(2, 3))


class Linear(nn.Module):
    """A linear classifier of 1 x 2 x 2 images into 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)
        with torch.no_grad():
            self.head.weight.copy_(
                torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, 1.0, -1.0], [2.0, 0.0, -1.0, 1.0]])
            )
            self.head.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


def _batch() -> Batch:
    images = torch.tensor([[[[0.1, 0.9], [0.4, 0.2]]], [[[0.7, 0.3], [0.6, 0.8]]]])
    masks = torch.zeros(2, 2, 2, dtype=torch.bool)
    masks[:, 0, 0] = True  # the top-left pixel is the shortcut
    return Batch(images, torch.tensor([0, 2]), masks, 0, 0, 1)


def test_objective_by_hand_with_a_swap() -> None:
    model, batch = Linear(), _batch()
    loss, logits = prediction_difference_objective(3.0)(model, batch)
    # a batch of two swaps the top-left pixels of the two images
    swapped = batch.images.clone()
    swapped[0, 0, 0, 0], swapped[1, 0, 0, 0] = batch.images[1, 0, 0, 0], batch.images[0, 0, 0, 0]
    with torch.no_grad():
        z, zt = model(batch.images), model(swapped)
        p, q = F.softmax(z, 1), F.softmax(zt, 1)
        kl = (q * (q.log() - p.log())).sum(1).mean()
        expected = F.cross_entropy(z, batch.labels) + 3.0 * kl
    torch.testing.assert_close(logits, z)
    torch.testing.assert_close(loss.detach(), expected)


def test_objective_gradient_flows_through_both_predictions() -> None:
    model, batch = Linear(), _batch()
    loss, _ = prediction_difference_objective(1.0)(model, batch)
    (grad,) = torch.autograd.grad(loss, model.head.weight)
    swapped = batch.images.clone()
    swapped[0, 0, 0, 0], swapped[1, 0, 0, 0] = batch.images[1, 0, 0, 0], batch.images[0, 0, 0, 0]
    z, zt = model(batch.images), model(swapped)
    by_hand = F.cross_entropy(z, batch.labels) + prediction_difference_penalty(z, zt)
    (expected,) = torch.autograd.grad(by_hand, model.head.weight, retain_graph=True)
    torch.testing.assert_close(grad, expected)
    # not the gradient with the replaced images' prediction held fixed
    (detached,) = torch.autograd.grad(
        F.cross_entropy(z, batch.labels) + prediction_difference_penalty(z, zt.detach()),
        model.head.weight,
    )
    assert not torch.allclose(grad, detached)


def test_objective_is_cross_entropy_when_the_region_is_not_used() -> None:
    model, batch = Linear(), _batch()
    with torch.no_grad():
        model.head.weight[:, 0] = 0.0  # the top-left pixel reaches no logit
    loss, logits = prediction_difference_objective(100.0)(model, batch)
    torch.testing.assert_close(loss.detach(), F.cross_entropy(logits, batch.labels).detach())


def test_objective_takes_an_augment() -> None:
    model, batch = Linear(), _batch()
    aug = Counterexamples(fill="constant", generator=torch.Generator().manual_seed(0))
    loss, logits = prediction_difference_objective(1.0, augment=aug)(model, batch)
    replaced = Counterexamples(fill="constant", generator=torch.Generator().manual_seed(0))(
        batch.images, batch.labels, batch.masks
    )[0][2:]
    with torch.no_grad():
        expected = F.cross_entropy(logits, batch.labels) + prediction_difference_penalty(
            logits, model(replaced)
        )
    torch.testing.assert_close(loss.detach(), expected)


def test_objective_bad_input() -> None:
    with pytest.raises(DTypeError, match="augment"):
        prediction_difference_objective(1.0, augment="swap")  # type: ignore[arg-type]
    batch = _batch()
    no_masks = Batch(batch.images, batch.labels, None, 0, 0, 1)
    with pytest.raises(MissingInputError, match="masks"):
        prediction_difference_objective(1.0)(Linear(), no_masks)


def test_objective_fraction_takes_the_first_images() -> None:
    model, batch = Linear(), _batch()
    loss, logits = prediction_difference_objective(2.0, fraction=0.5)(model, batch)
    swapped = batch.images.clone()
    swapped[0, 0, 0, 0] = batch.images[1, 0, 0, 0]  # image 0 with image 1's top-left pixel
    with torch.no_grad():
        p, q = F.softmax(logits[:1], 1), F.softmax(model(swapped[:1]), 1)
        kl = (q * (q.log() - p.log())).sum()
        expected = F.cross_entropy(logits, batch.labels) + 2.0 * kl
    torch.testing.assert_close(loss.detach(), expected)


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, float("nan")])
def test_objective_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(RangeError, match="fraction"):
        prediction_difference_objective(1.0, fraction=fraction)


def test_a_batch_of_one_has_no_penalty() -> None:
    model, batch = Linear(), _batch()
    one = Batch(batch.images[:1], batch.labels[:1], batch.masks[:1], 0, 0, 1)
    loss, logits = prediction_difference_objective(100.0)(model, one)
    torch.testing.assert_close(loss.detach(), F.cross_entropy(logits, one.labels).detach())
