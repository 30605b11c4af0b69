"""ROAD and selectivity against direct per-fraction / per-step computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xai_feedback import DTypeError, RangeError, ShapeError
from xai_feedback.evaluation import Curves, road, selectivity
from xai_feedback.functional.masking import rank_mask


class Linear(nn.Module):
    """A linear classifier whose true relevance of pixel p for class k is w_kp * x_p."""

    def __init__(self, h: int = 8, w: int = 8, k: int = 3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(k, h * w, generator=g))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x.flatten(1) @ self.weight.T


def _data(n: int = 40) -> tuple[Linear, torch.Tensor, torch.Tensor]:
    model = Linear()
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1)) + 0.5
    with torch.no_grad():
        y = model(x).argmax(1)
    model.seen.clear()
    return model, x, y


def _relevance(model: Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model.weight[y].view(-1, 1, 8, 8) * x).detach()


@pytest.mark.parametrize("squared", [None, True, False])
def test_road_equals_direct_computation(squared: bool | None) -> None:
    """The default ranks by magnitude (``squared=True``); ``False`` by the signed value."""
    model, x, y = _data()
    rel = _relevance(model, x, y)  # signed: the linear model has negative weights
    options = {} if squared is None else {"squared": squared}
    curves = road(
        model,
        x,
        y,
        {"true": rel},
        fractions=[0.25, 0.5],
        fill="zero",
        random_baseline=False,
        **options,  # type: ignore[arg-type]
    )
    by_magnitude = squared is not False
    for order, most in (("morf", True), ("lerf", False)):
        for f in (0.25, 0.5):
            mask = rank_mask(rel.abs() if by_magnitude else rel, f, most_relevant=most)
            xm = torch.where(mask.unsqueeze(1), 0.0, x)
            with torch.no_grad():
                p = model(xm).softmax(1)
            assert curves[order].runs("true", f) == [
                pytest.approx(float((p.argmax(1) == y).float().mean()))
            ]
            expected = float(p.gather(1, y.view(-1, 1)).mean().detach())
            assert curves[f"{order}_probability"].runs("true", f) == [pytest.approx(expected)]


def test_road_true_relevance_beats_random_and_restores_mode() -> None:
    model, x, y = _data(200)
    model.train()
    g = torch.Generator().manual_seed(3)
    # signed ranking: MoRF removes the strongest evidence *for* the class first (by magnitude,
    # the default, it removes evidence against it as well, and a linear model barely moves)
    rel = _relevance(model, x, y)
    curves = road(model, x, y, {"true": rel}, fractions=[0.2, 0.4], squared=False, generator=g)
    assert model.training
    assert curves["morf"].auc("true") < curves["morf"].auc("random") - 0.05
    assert isinstance(Curves.from_dict(curves["morf"].to_dict()), Curves)


def test_road_errors() -> None:
    model, x, y = _data(4)
    with pytest.raises(RangeError, match="fractions"):
        road(model, x, y, {"a": x}, fractions=[0.0, 0.5])
    with pytest.raises(RangeError, match="fractions"):
        road(model, x, y, {"a": x}, fractions=[1.0])
    with pytest.raises(ShapeError, match="methods\\['a'\\]"):
        road(model, x, y, {"a": x[:, :, :4]})
    with pytest.raises(DTypeError, match="methods"):
        road(model, x, y, {"a": [1, 2]})  # type: ignore[dict-item]


@pytest.mark.parametrize("mode", ["selectivity", "deletion", "insertion"])
def test_selectivity_removes_one_new_patch_per_step(mode: str) -> None:
    model, x, y = _data(6)
    calls: list[torch.Tensor] = []

    def explain(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append(images.detach().clone())
        return images * torch.linspace(0, 1, 8).view(1, 1, 1, 8)  # favor the right columns

    out = selectivity(model, x, y, {"m": explain}, mode=mode, patch=4, random_baseline=False)
    assert len(model.seen) == 5  # steps 0..4 of 4 patches
    for step, seen in enumerate(model.seen):
        removed = int((seen == 0).sum()) // 6
        assert removed == (16 * step if mode != "insertion" else 64 - 16 * step)
    # the right half goes first (highest scores), and no patch is chosen twice
    assert bool((model.seen[2][:, :, :, 4:] == 0).all() if mode != "insertion" else True)
    assert len(calls) == (4 if mode == "selectivity" else 1)
    assert out["accuracy"].fractions == [0.0, 0.25, 0.5, 0.75, 1.0]
    intact = 1.0 if mode == "insertion" else 0.0  # the step with every pixel present
    assert out["accuracy"].runs("m", intact) == [1.0]


def test_selectivity_recomputes_on_the_current_image() -> None:
    model, x, y = _data(5)
    seen: list[torch.Tensor] = []

    def explain(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen.append(images.detach().clone())
        return _relevance(model, images, target)

    selectivity(model, x, y, {"m": explain}, patch=4, steps=2, random_baseline=False)
    assert torch.equal(seen[0], x) and not torch.equal(seen[1], x)
    with pytest.raises(RangeError, match="callable"):
        selectivity(model, x, y, {"m": x}, mode="selectivity")
    deletion = selectivity(model, x, y, {"m": _relevance(model, x, y)}, mode="deletion", patch=4)
    with torch.no_grad():
        blank = model(torch.zeros_like(x)).softmax(1).gather(1, y.view(-1, 1)).mean()
    assert deletion["probability"].runs("m", 1.0) == [pytest.approx(float(blank))]
