import math

import pytest
import torch

from xai_feedback import RangeError, ShapeError
from xai_feedback.attribution import attribute
from xai_feedback.data import load_digits
from xai_feedback.models import GAPNet
from xai_feedback.proxy import (
    ProxyAttention,
    ProxySchedule,
    mine_hard_examples,
    proxy_images,
    train_with_proxy,
)


def _reference_proxy(x: torch.Tensor, m: torch.Tensor, tau: float, fill: str) -> torch.Tensor:
    """Per-image loop, the seed's algorithm with per-image fills (independent reference)."""
    out = x.clone()
    for i in range(len(x)):
        mi = m[i]
        mi = (mi - mi.min()) / (mi.max() - mi.min() + 1e-8)
        up = torch.nn.functional.interpolate(
            mi[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False
        )[0, 0].clamp(0, 1)
        for c in range(x.shape[1]):
            value = {
                "zero": 0.0,
                "mean": x[i, c].mean(),
                "max": x[i, c].max(),
                "min": x[i, c].min(),
            }[fill]
            out[i, c][up > tau] = value
    return out


@pytest.mark.parametrize("fill", ["zero", "mean", "max", "min"])
def test_replace_matches_per_image_reference(fill: str, device: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 16, 16, generator=g)
    m = torch.rand(5, 4, 4, generator=g) * torch.arange(1, 6).view(5, 1, 1)  # different scales
    ours = proxy_images(x.to(device), m.to(device), threshold=0.6, fill=fill)
    assert ours.device.type == device.type
    assert torch.allclose(ours.cpu(), _reference_proxy(x, m, 0.6, fill), atol=1e-6)


def test_blend_and_fill_is_per_image_not_per_batch() -> None:
    x = torch.stack([torch.full((1, 4, 4), 0.2), torch.full((1, 4, 4), 0.8)])
    m = torch.rand(2, 4, 4)
    out = proxy_images(x, m, threshold=0.5, fill="mean")
    # filled pixels take each image's own mean, not the batch's 0.5
    assert torch.allclose(out[0], torch.full_like(out[0], 0.2))
    assert torch.allclose(out[1], torch.full_like(out[1], 0.8))
    mixed = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    mixed[0, 0, 0, 0] = 1.0  # image 0's mean is 1/16
    filled = proxy_images(mixed, m, threshold=0.0, fill="mean")  # all but each map's minimum
    sel = m > m.flatten(1).amin(1)[:, None, None]
    assert torch.allclose(filled[0, 0][sel[0]], torch.tensor(1 / 16))
    assert torch.allclose(filled[1, 0][sel[1]], torch.tensor(1.0))
    b = proxy_images(x, m, mode="blend", strength=0.4)
    norm = (m - m.flatten(1).amin(1)[:, None, None]) / (
        m.flatten(1).amax(1) - m.flatten(1).amin(1)
    )[:, None, None]
    assert torch.allclose(b, (1 - 0.4 * norm[:, None]) * x, atol=1e-6)
    assert ProxyAttention(mode="blend", strength=0.4)(x, m).shape == x.shape


def test_mine_hard_examples() -> None:
    logits = torch.tensor([[3.0, 0.0], [0.0, 2.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.5]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    # wrong: 1 (loss high), 2, 3; ranked by loss: 1 (2.13), 3 (1.31), 2 (1.31)
    assert mine_hard_examples(logits, labels, fraction=1.0).tolist()[0] == 1
    assert len(mine_hard_examples(logits, labels, fraction=0.2)) == math.ceil(0.2 * 3)
    assert mine_hard_examples(logits, labels, by="loss", count=2).tolist()[0] == 1
    with pytest.warns(RuntimeWarning, match="mined nothing: 0 of 5 examples are candidates"):
        none = mine_hard_examples(logits, logits.argmax(1), fraction=0.5)
    assert none.shape == (0,) and none.dtype == torch.long  # nothing wrong: empty, no crash
    with pytest.raises(RangeError, match=r"classes in \[0, 2\), got values in \[-1, 1\]"):
        mine_hard_examples(logits, torch.tensor([0, 0, 0, 1, -1]))  # never wrapped to class 1


def test_schedule_validation() -> None:
    assert ProxySchedule([5, "p", 9, "p", 4]).without_proxies().steps == [5, 9, 4]
    with pytest.raises(RangeError, match="end with epochs"):
        ProxySchedule([5, "p"])
    with pytest.raises(RangeError, match=r'`steps\[1\]` must be an epoch count or "p"'):
        ProxySchedule([5, "q", 3])
    with pytest.raises(RangeError, match="must not be empty"):
        ProxySchedule([])


def test_train_with_proxy_adds_proxies_in_memory_and_keeps_test_split_fixed() -> None:
    data = load_digits("train").subset(torch.arange(300))
    test = load_digits("test")
    g = torch.Generator().manual_seed(0)
    model = GAPNet(width=4, generator=g)
    history = train_with_proxy(
        model, data, [1, "p", 1], fraction=1.0, method="grad_cam_pp", generator=g
    )
    (round_,) = history.rounds
    assert round_.epoch == 1 and round_.hard_examples > 0
    assert round_.training_size == len(data) + round_.hard_examples
    assert len(history.segments) == 2 and len(test) == 360  # evaluation data untouched
    for method in ("cam", "saliency"):
        maps = attribute(model, data.images[:3], None, method=method, reduce="abs_sum")
        assert maps.shape[0] == 3 and maps.dim() == 3


def test_clear_errors() -> None:
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(RangeError, match="`threshold` must be <= 1"):
        proxy_images(x, torch.rand(2, 7, 7), threshold=1.5)
    with pytest.raises(RangeError, match="`threshold` must be >= 0"):
        ProxyAttention(threshold=-0.1)
    with pytest.raises(RangeError, match="`fill` must be one of"):
        proxy_images(x, torch.rand(2, 7, 7), fill="noise")
    with pytest.raises(RangeError, match="`mode` must be one of"):
        proxy_images(x, torch.rand(2, 7, 7), mode="cutout")
    with pytest.raises(ShapeError, match="one map per image"):
        proxy_images(x, torch.rand(3, 7, 7))
    with pytest.raises(ShapeError, match="different aspect ratio"):
        proxy_images(x, torch.rand(2, 7, 5))
    with pytest.raises(RangeError, match="`method` must be one of"):
        attribute(GAPNet(width=4), x, None, method="lrp", reduce="abs_sum")
    assert proxy_images(x[:0], torch.rand(0, 7, 7)).shape == (0, 1, 28, 28)
