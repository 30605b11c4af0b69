"""``load_weights`` on files that are not (whole) ``torch.save`` state dicts.

Each must be a :class:`WeightsError` naming the file and what was expected, whatever part of
torch's parsers the damage reaches; the model must be left untouched.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from xai_feedback.errors import WeightsError
from xai_feedback.models.pretrained import load_weights


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))


def _assert_refused(net: nn.Module, file: Path) -> WeightsError:
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(WeightsError, match=r"state-dict file written by torch\.save") as info:
        load_weights(net, file)
    assert repr(str(file)) in str(info.value)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    return info.value


def test_an_empty_file_is_a_weights_error(tmp_path: Path) -> None:
    file = tmp_path / "empty.pth"
    file.write_bytes(b"")
    error = _assert_refused(_net(0), file)
    assert "empty (0 bytes)" in str(error)


def test_a_text_file_is_a_weights_error(tmp_path: Path) -> None:
    file = tmp_path / "notes.pth"
    file.write_text("epoch 3: loss 0.25\n")
    error = _assert_refused(_net(0), file)
    assert "19 bytes, starting with b'epoch 3: loss 0.'" in str(error)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_every_truncation_of_a_real_checkpoint_is_a_weights_error(
    tmp_path: Path, legacy: bool
) -> None:
    whole = tmp_path / "whole.pth"
    torch.save(_net(1).state_dict(), whole, _use_new_zipfile_serialization=not legacy)
    raw = whole.read_bytes()
    assert load_weights(_net(0), whole) is not None  # the whole file loads
    cut = tmp_path / "cut.pth"
    kinds: set[str] = set()
    for length in sorted({1, 2, 8, 16, 64, *range(0, len(raw), max(1, len(raw) // 60))} - {0}):
        cut.write_bytes(raw[:length])
        error = _assert_refused(_net(0), cut)
        assert f"({length} bytes" in str(error)
        cause = error.__cause__
        kinds.add(type(cause).__name__)
    # the legacy format fails in several of torch's parsers, not only with RuntimeError
    if legacy:
        assert {"IndexError", "error"} <= kinds, kinds  # struct.error is named "error"


# ----- replace_head on a 1x1-conv classifier after squeeze-excitation features -------------


class SqueezeExcite(nn.Module):
    """Squeeze-excitation with nn.Linear (Hu et al. 2018): channel weights from pooled features."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Linear(channels, reduced), nn.Linear(reduced, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.fc2(torch.relu(self.fc1(self.pool(x).flatten(1)))))
        return x * w[:, :, None, None]


class SqueezeNetLike(nn.Module):
    """Features with an SE block, then SqueezeNet's head: 1x1 conv, ReLU, global pooling."""

    def __init__(self, num_classes: int = 10, head_name: str = "classifier") -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), SqueezeExcite(8, 2))
        setattr(
            self,
            head_name,
            nn.Sequential(nn.Dropout(0.5), nn.Conv2d(8, num_classes, 1), nn.ReLU()),
        )
        self.head_name = head_name
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = getattr(self, self.head_name)
        return self.pool(head(self.features(x))).flatten(1)


@pytest.mark.parametrize("head_name", ["classifier", "final"], ids=["named", "unnamed"])
def test_replace_head_finds_a_1x1_conv_classifier_not_the_se_linear(head_name: str) -> None:
    from xai_feedback.layers import find_classifier
    from xai_feedback.models.pretrained import replace_head

    torch.manual_seed(0)
    model = SqueezeNetLike(head_name=head_name).eval()
    x = torch.rand(2, 3, 6, 6)
    assert model(x).shape == (2, 10)
    se = model.features[2]
    fc1, fc2 = se.fc1, se.fc2
    features_before = {k: v.clone() for k, v in model.features.state_dict().items()}
    assert find_classifier(model).name == f"{head_name}.1"
    assert replace_head(model, 4, generator=torch.Generator().manual_seed(0)) is model
    new = getattr(model, head_name)[1]
    assert isinstance(new, nn.Conv2d) and new.kernel_size == (1, 1)
    assert (new.in_channels, new.out_channels) == (8, 4)
    assert se.fc1 is fc1 and se.fc2 is fc2  # the SE block is untouched
    for k, v in model.features.state_dict().items():
        assert torch.equal(v, features_before[k]), k
    assert float(new.weight.detach().abs().max()) <= 1 / 8**0.5 and torch.equal(
        new.bias, torch.zeros(4)
    )
    out = model(x)
    assert out.shape == (2, 4)
    # the logits are the new conv applied to the (unchanged) features, then ReLU and pooling
    feats = model.features(x)
    expected = torch.relu(torch.nn.functional.conv2d(feats, new.weight, new.bias)).mean((2, 3))
    torch.testing.assert_close(out, expected)


def test_replace_head_refuses_a_linear_inside_the_features() -> None:
    """The last nn.Linear is followed by spatial convolutions: the head cannot be told."""
    from xai_feedback.errors import LayerError
    from xai_feedback.models.pretrained import replace_head

    class HeadFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3), SqueezeExcite(8, 2))
            self.body = nn.Sequential(nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(self.stem(x))

    with pytest.raises(LayerError, match=r"'stem\.1\.fc2'.*followed by.*'body\.0'.*head="):
        replace_head(HeadFirst(), 3)
    model = SqueezeNetLike(head_name="final")
    replace_head(model, 3, head="final.1")  # named: replaced whatever the structure says
    assert model(torch.rand(1, 3, 4, 4)).shape == (1, 3)
