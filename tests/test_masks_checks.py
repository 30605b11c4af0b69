"""Annotation masks must be boolean or in [0, 1]: one check (``check_masks``) for every consumer.

A 0/255 mask (read from an 8-bit image) used to scale RobustViT's foreground term by 255^2
and the counterexample pixels by 255; masks in [-1, 2] or with a NaN passed too. Each
consumer now refuses them with a RangeError naming ``masks`` (for 0/255: divide by 255), and
the masks it accepts give the same answer as before (checked against hand formulas).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from xai_feedback._checks import check_masks
from xai_feedback.counterexamples import Counterexamples, counterexamples
from xai_feedback.errors import DTypeError, RangeError
from xai_feedback.functional.penalties import (
    dilate_masks,
    input_gradient_penalty,
    mask_penalty,
    masks_to_maps,
    receptive_field_cover,
    relevance_background_loss,
    relevance_foreground_loss,
    robustvit_penalty,
)
from xai_feedback.losses import MaskPenalty, RobustViTPenalty, RRRPenalty
from xai_feedback.objectives import relevance_penalty_objective, rrr_objective
from xai_feedback.training import Batch

B, H, W = 2, 4, 4
HINT = r"`masks` must be boolean or hold values in \[0, 1\], got values in \[0, 255\].*255"


def _binary() -> torch.Tensor:
    masks = torch.zeros(B, H, W, dtype=torch.bool)
    masks[0, :2, :2] = True
    masks[1, 1:, 3] = True
    return masks


def _bad_masks() -> dict[str, tuple[torch.Tensor, str]]:
    """Each bad mask with the part of the message that describes it."""
    binary = _binary()
    nan = binary.float()
    nan[0, 3, 3] = float("nan")
    inf = binary.float()
    inf[1, 0, 0] = float("inf")
    return {
        "uint8 0/255": (binary.to(torch.uint8) * 255, HINT),
        "float 0/255": (binary.float() * 255, HINT),
        "[-1, 2]": (binary.float() * 3 - 1, r"got values in \[-1, 2\] \(dtype torch.float32\)\.$"),
        "int64 0/2": (binary.long() * 2, r"\[0, 2\].*divide it by 255"),
        "NaN": (nan, r"1 NaN or infinite"),
        "inf": (inf, r"1 NaN or infinite"),
    }


BAD = _bad_masks()


def _good_masks() -> list[torch.Tensor]:
    binary = _binary()
    return [binary, binary.to(torch.uint8), binary.long(), binary.float(), binary.double()]


# --- the check itself --------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(BAD))
def test_check_masks_refuses(kind: str) -> None:
    masks, message = BAD[kind]
    with pytest.raises(RangeError, match=message.replace("divide", "Divide")):
        check_masks(masks)


def test_check_masks_accepts_and_passes_through() -> None:
    for masks in [*_good_masks(), torch.rand(B, H, W), torch.zeros(0, H, W)]:
        assert check_masks(masks) is masks
    assert check_masks(torch.full((2, 2), 255.0, device="meta")).device.type == "meta"
    with pytest.raises(DTypeError, match=r"`region` must be a torch\.Tensor"):
        check_masks([[0, 1]], "region")
    with pytest.raises(DTypeError, match="complex"):
        check_masks(torch.zeros(1, 2, 2, dtype=torch.complex64))
    with pytest.raises(RangeError, match=r"`region` .*region > 127"):
        check_masks(torch.tensor([[0.0, 255.0]]), "region")


# --- RobustViT ---------------------------------------------------------------------------


def _robustvit_by_hand(r: torch.Tensor, m: torch.Tensor) -> float:
    """2 * mean(((1 - M) R)^2) + 0.3 * mean((M R - M)^2), the paper's weights."""
    m = m.double()
    r = r.double()
    return float(2 * (((1 - m) * r) ** 2).mean() + 0.3 * ((m * r - m) ** 2).mean())


def test_robustvit_penalty_accepts_binary_masks_with_the_papers_value() -> None:
    maps = torch.rand(B, H, W, generator=torch.Generator().manual_seed(0))
    maps = (maps - maps.amin((1, 2), keepdim=True)) / (
        maps.amax((1, 2), keepdim=True) - maps.amin((1, 2), keepdim=True)
    )
    expected = _robustvit_by_hand(maps, _binary().float())
    for masks in _good_masks():
        got = float(RobustViTPenalty(normalize="none")(maps, masks=masks))
        assert got == pytest.approx(expected, rel=1e-6)
    excluded = float(RobustViTPenalty(normalize="none", marks="excluded")(maps, masks=~_binary()))
    assert excluded == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", list(BAD))
@pytest.mark.parametrize("marks", ["foreground", "excluded"])
def test_robustvit_penalty_refuses_bad_masks(kind: str, marks: str) -> None:
    masks, message = BAD[kind]
    maps = torch.rand(B, H, W)
    with pytest.raises(RangeError, match=message.replace("divide", "Divide")):
        RobustViTPenalty(marks=marks)(maps, masks=masks)


def test_relevance_penalty_objective_robustvit_refuses_0_255_masks() -> None:
    torch.manual_seed(0)
    enc = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc, self.head = enc, nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.enc(x)[:, 0])

    tokens = torch.randn(B, 5, 8)
    good = torch.zeros(B, 2, 2, dtype=torch.bool)
    good[:, 0, 0] = True
    objective = relevance_penalty_objective("robustvit", options={"prefix_tokens": 1, "query": 0})
    labels = torch.tensor([0, 2])
    loss, _ = objective(Tiny(), Batch(tokens, labels, good, epoch=0, step=0, total_epochs=1))
    assert torch.isfinite(loss)
    for bad in (good.to(torch.uint8) * 255, good.float() * 255):
        batch = Batch(tokens, labels, bad, epoch=0, step=0, total_epochs=1)
        with pytest.raises(RangeError, match=HINT):
            objective(Tiny(), batch)


# --- counterexamples -----------------------------------------------------------------------


def test_counterexamples_blend_with_accepted_masks() -> None:
    images = torch.rand(B, 1, H, W, generator=torch.Generator().manual_seed(1))
    half = torch.full((B, H, W), 0.5)
    out = counterexamples(images, half, fill="swap", generator=torch.Generator().manual_seed(0))
    # swap with B = 2 exchanges the two images: each pixel is the mean of both
    torch.testing.assert_close(out, (images + images.flip(0)) / 2)
    for masks in _good_masks():
        made = counterexamples(images, masks, generator=torch.Generator().manual_seed(0))
        assert float(made.min()) >= 0 and float(made.max()) <= 1
        torch.testing.assert_close(
            made[~_binary()[:, None].expand_as(made)], images[~_binary()[:, None].expand_as(images)]
        )


@pytest.mark.parametrize("kind", list(BAD))
def test_counterexamples_refuse_bad_masks(kind: str) -> None:
    masks, message = BAD[kind]
    images = torch.rand(B, 1, H, W)
    labels = torch.tensor([0, 1])
    message = message.replace("divide", "Divide")
    with pytest.raises(RangeError, match=message):
        counterexamples(images, masks)
    with pytest.raises(RangeError, match=message):
        Counterexamples(copies=2)(images, labels, masks)


# --- the mask penalties and kernels ----------------------------------------------------------


def _kernel_calls() -> dict[str, Callable[[torch.Tensor], object]]:
    maps = torch.rand(B, 2, 2)
    full = torch.rand(B, H, W)

    def rrr(masks: torch.Tensor) -> object:
        images = torch.rand(B, 1, H, W, requires_grad=True)
        logits = nn.Sequential(nn.Flatten(), nn.Linear(H * W, 3))(images)
        return input_gradient_penalty(logits, images, masks)

    def rrr_module(masks: torch.Tensor) -> object:
        images = torch.rand(B, 1, H, W, requires_grad=True)
        logits = nn.Sequential(nn.Flatten(), nn.Linear(H * W, 3))(images)
        return RRRPenalty("all", generator=torch.Generator().manual_seed(0))(logits, images, masks)

    return {
        "mask_penalty": lambda m: mask_penalty(maps, m),
        "masks_to_maps": lambda m: masks_to_maps(m, (2, 2)),
        "dilate_masks": lambda m: dilate_masks(m, 1),
        "receptive_field_cover": lambda m: receptive_field_cover(m, 3),
        "relevance_background_loss": lambda m: relevance_background_loss(full, m),
        "relevance_foreground_loss": lambda m: relevance_foreground_loss(full, m),
        "robustvit_penalty": lambda m: robustvit_penalty(full, m),
        "input_gradient_penalty": rrr,
        "MaskPenalty": lambda m: MaskPenalty()(maps, masks=m),
        "MaskPenalty(dilation=1)": lambda m: MaskPenalty(dilation=1)(maps, masks=m),
        "RRRPenalty": rrr_module,
    }


CALLS = _kernel_calls()


@pytest.mark.parametrize("name", list(CALLS))
@pytest.mark.parametrize("kind", list(BAD))
def test_mask_kernels_and_penalties_refuse_bad_masks(name: str, kind: str) -> None:
    masks, message = BAD[kind]
    with pytest.raises(RangeError, match=message.replace("divide", "Divide")):
        CALLS[name](masks)


def test_mask_penalty_value_with_accepted_masks() -> None:
    """The mean of (cover * map)^2 over images and cells, cover the masked share of a cell."""
    maps = torch.rand(B, 2, 2, generator=torch.Generator().manual_seed(2))
    cover = _binary().float().reshape(B, 2, 2, 2, 2).mean((2, 4))
    expected = float(((cover * maps) ** 2).mean())
    values = {float(mask_penalty(maps, m)) for m in _good_masks()}
    assert max(values) == pytest.approx(expected, rel=1e-6)
    assert min(values) == pytest.approx(expected, rel=1e-6)


def test_rrr_objective_refuses_0_255_masks() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(H * W, 3))
    images = torch.rand(B, 1, H, W)
    masks = _binary().to(torch.uint8) * 255
    batch = Batch(images, torch.tensor([0, 1]), masks, epoch=0, step=0, total_epochs=1)
    with pytest.raises(RangeError, match=HINT):
        rrr_objective()(model, batch)


def test_training_step_mask_checks_read_no_data_on_accelerators(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With sync=False the check is a device-side assertion: no host read, same refusal."""
    from xai_feedback import _checks

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the mask check read tensor data from Python (a host sync)")

    maps = torch.rand(B, H, W)
    soft = _binary().float() * 0.5
    expected = float(RobustViTPenalty()(maps, masks=soft))
    with monkeypatch.context() as m:
        m.setattr(_checks, "on_accelerator", lambda x: True)
        for name in ("__bool__", "item", "tolist", "__int__", "__float__", "__index__"):
            m.setattr(torch.Tensor, name, refuse)
        value = RobustViTPenalty()(maps, masks=soft)
        mask_value = MaskPenalty()(maps, masks=soft)
        made = counterexamples(torch.rand(B, 1, H, W), soft)
    assert float(value) == expected
    assert torch.isfinite(mask_value) and made.shape == (B, 1, H, W)
    monkeypatch.setattr(_checks, "on_accelerator", lambda x: True)
    with pytest.raises(RuntimeError, match=r"`masks` must be boolean or hold values in \[0, 1\]"):
        RobustViTPenalty()(maps, masks=soft * 255)
