"""Pretrained weights from a file: the checksum in torchvision's naming convention, the key and
shape checks, the fine-tuning helpers (new head, frozen BatchNorm) and their effect on fit."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from xai_feedback import (
    DTypeError,
    LayerError,
    RangeError,
    WeightsError,
    WeightsNotFoundError,
    XAIFeedbackError,
)
from xai_feedback.data import ImageDataset
from xai_feedback.hooks import CAMHook
from xai_feedback.models import freeze_batchnorm, load_weights, replace_head
from xai_feedback.models.pretrained import file_sha256, hash_prefix
from xai_feedback.training import fit


class TinyResNet(nn.Module):
    """torchvision's ResNet layout in small: ``fc`` after ``avgpool``."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.layer4 = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TinyMobileNet(nn.Module):
    """torchvision's MobileNetV2 layout in small: ``classifier = Sequential(Dropout, Linear)``."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU6())
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def _trained_like(seed: int = 0) -> TinyResNet:
    """A TinyResNet with non-default values everywhere (BatchNorm statistics included)."""
    torch.manual_seed(seed)
    model = TinyResNet()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape) + (0.5 if "running_var" in name else 0))
    return model


def _save_named(state: dict[str, torch.Tensor] | object, folder: Path, stem: str) -> Path:
    """Save ``state``, then rename it ``<stem>-<first 8 hex of its SHA-256>.pth`` (torchvision)."""
    raw = folder / f"{stem}.tmp"
    torch.save(state, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()  # the reference: hashlib on the bytes
    return raw.rename(folder / f"{stem}-{digest[:8]}.pth")


def _equal_states(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----- load_weights -----------------------------------------------------------------------


def test_a_file_with_the_right_hash_loads_every_tensor(tmp_path: Path) -> None:
    source = _trained_like()
    path = _save_named(source.state_dict(), tmp_path, "tiny_resnet")
    fresh = TinyResNet()
    assert not _equal_states(fresh, source)
    assert load_weights(fresh, path) is fresh  # in place, returned for chaining
    assert _equal_states(fresh, source)  # BatchNorm buffers included
    x = torch.rand(2, 3, 12, 12)
    assert torch.equal(fresh.eval()(x), source.eval()(x))


def test_a_file_with_a_wrong_hash_is_refused(tmp_path: Path) -> None:
    good = _save_named(_trained_like().state_dict(), tmp_path, "tiny")
    actual = good.name.split("-")[1][:8]
    wrong = "0" * 8 if actual != "0" * 8 else "1" * 8
    bad = good.rename(tmp_path / f"tiny-{wrong}.pth")
    model = TinyResNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match=rf"starting with '{wrong}'.*got '{actual}'") as info:
        load_weights(model, bad)
    assert isinstance(info.value, ValueError) and isinstance(info.value, XAIFeedbackError)
    assert "check_hash=False" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    load_weights(model, bad, check_hash=False)  # the user's choice: no check
    assert _equal_states(model, _trained_like())


def test_a_longer_hash_prefix_is_checked_too(tmp_path: Path) -> None:
    raw = tmp_path / "w.pth"
    torch.save(_trained_like().state_dict(), raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    ok = raw.rename(tmp_path / f"w-{digest[:16]}.pth")
    load_weights(TinyResNet(), ok)
    flipped = digest[:15] + ("0" if digest[15] != "0" else "1")
    bad = ok.rename(tmp_path / f"w-{flipped}.pth")
    with pytest.raises(WeightsError, match=flipped):
        load_weights(TinyResNet(), bad)


def test_a_damaged_file_fails_its_checksum(tmp_path: Path) -> None:
    path = _save_named(_trained_like().state_dict(), tmp_path, "tiny")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="damaged"):
        load_weights(TinyResNet(), path)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mobilenet_v2-b0353104.pth", "b0353104"),
        ("resnet18-f37072fd.pth", "f37072fd"),
        ("efficientnet_b0_rwightman-7f5810bc.pth", "7f5810bc"),
        ("w-" + "a" * 64 + ".pt", "a" * 64),
        ("plain.pth", None),
        ("model-cafe.pth", None),  # fewer than 8 hex digits
        ("model-B0353104.pth", None),  # torchvision's digests are lowercase
        ("model-b0353104x.pth", None),
        ("b0353104.pth", None),  # no dash
    ],
)
def test_hash_prefix_follows_torchvisions_names(name: str, expected: str | None) -> None:
    assert hash_prefix(name) == expected
    assert hash_prefix(Path("some") / "folder" / name) == expected


def test_file_sha256_equals_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = torch.randint(0, 256, (3 << 20,), dtype=torch.uint8).numpy().tobytes()  # > 1 chunk
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_a_name_without_hash_loads_without_check(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save(_trained_like().state_dict(), path)
    model = load_weights(TinyResNet(), str(path))  # str accepted as well as Path
    assert _equal_states(model, _trained_like())


def test_a_missing_file_is_a_file_not_found_error(tmp_path: Path) -> None:
    missing = tmp_path / "resnet18-f37072fd.pth"
    with pytest.raises(WeightsNotFoundError, match="does not exist") as info:
        load_weights(TinyResNet(), missing)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, WeightsError)
    assert "Nothing is downloaded" in str(info.value)
    with pytest.raises(WeightsNotFoundError, match="is a folder"):
        load_weights(TinyResNet(), tmp_path)


def test_wrong_argument_types(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(TinyResNet().state_dict(), path)
    with pytest.raises(DTypeError, match=re.escape("`path` must be a str or os.PathLike, got int")):
        load_weights(TinyResNet(), 3)  # type: ignore[arg-type]
    with pytest.raises(DTypeError, match=re.escape("`model` must be an nn.Module, got dict")):
        load_weights({}, path)  # type: ignore[type-var]


def test_keys_that_differ_are_named_with_their_counts(tmp_path: Path) -> None:
    state = _trained_like().state_dict()
    state = {("backbone." + k if k.startswith("layer4") else k): v for k, v in state.items()}
    path = _save_named(state, tmp_path, "renamed")
    with pytest.raises(WeightsError) as info:
        load_weights(TinyResNet(), path)
    message = str(info.value)
    assert "missing 7 (layer4.0.weight, layer4.0.bias, layer4.1.weight" in message
    assert "and 2 more" in message
    assert "unexpected 7 (backbone.layer4.0.weight" in message
    assert "strict=False" in message


def test_strict_false_loads_what_matches_and_logs_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _trained_like()
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    state["extra.weight"] = torch.zeros(3)
    path = _save_named(state, tmp_path, "partial")
    model = TinyResNet()
    fc_before = model.fc.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="xai_feedback"):
        load_weights(model, path, strict=False)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer4[1].running_var, source.layer4[1].running_var)
    assert torch.equal(model.fc.weight, fc_before)  # absent from the file: untouched
    assert "missing 2 (fc.weight, fc.bias)" in caplog.text
    assert "unexpected 1 (extra.weight)" in caplog.text


def test_strict_false_with_no_matching_key_is_refused(tmp_path: Path) -> None:
    path = _save_named({"other.weight": torch.zeros(2)}, tmp_path, "other")
    with pytest.raises(WeightsError, match="at least one key must match"):
        load_weights(TinyResNet(), path, strict=False)


@pytest.mark.parametrize("strict", [True, False])
def test_a_head_of_another_size_is_a_shape_error_pointing_at_replace_head(
    tmp_path: Path, strict: bool
) -> None:
    path = _save_named(TinyResNet(num_classes=1000).state_dict(), tmp_path, "imagenet")
    with pytest.raises(WeightsError, match=r"fc.weight: file \(1000, 8\) vs model \(5, 8\)") as e:
        load_weights(TinyResNet(num_classes=5), path, strict=strict)
    assert "replace_head" in str(e.value)
    # The documented way: the original architecture, then a new head.
    model = replace_head(load_weights(TinyResNet(num_classes=1000), path), 5)
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 5)


def test_contents_that_are_not_a_state_dict_are_refused(tmp_path: Path) -> None:
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(WeightsError, match=r"must hold a state dict.*got a Tensor"):
        load_weights(TinyResNet(), tensor)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(WeightsError, match="weights_only=True"):
        load_weights(TinyResNet(), garbage)


class _Payload:
    pass


def test_a_pickled_object_is_never_executed(tmp_path: Path) -> None:
    # weights_only=True: a file that needs arbitrary classes is refused, not unpickled.
    path = tmp_path / "code.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(WeightsError, match="weights_only=True"):
        load_weights(TinyResNet(), path)


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_a_checkpoint_with_a_nested_state_dict_loads(tmp_path: Path, key: str) -> None:
    source = _trained_like()
    path = _save_named({key: source.state_dict(), "epoch": 7}, tmp_path, "ckpt")
    assert _equal_states(load_weights(TinyResNet(), path), source)


def test_wrapper_prefixes_are_handled_both_ways(tmp_path: Path) -> None:
    source = _trained_like()
    saved_wrapped = _save_named(nn.DataParallel(source).state_dict(), tmp_path, "dp")
    assert next(iter(torch.load(saved_wrapped, weights_only=True))).startswith("module.")
    assert _equal_states(load_weights(TinyResNet(), saved_wrapped), source)
    plain = _save_named(source.state_dict(), tmp_path, "plain")
    wrapped = nn.DataParallel(TinyResNet())
    assert load_weights(wrapped, plain) is wrapped  # loads into the model inside
    assert _equal_states(wrapped.module, source)


def test_tensors_take_the_models_dtype(tmp_path: Path) -> None:
    source = _trained_like()
    path = _save_named(source.state_dict(), tmp_path, "f32")
    model = load_weights(TinyResNet().double(), path)
    assert model.conv1.weight.dtype == torch.float64
    assert torch.equal(model.conv1.weight, source.conv1.weight.double())


def test_loaded_weights_give_the_same_maps(tmp_path: Path) -> None:
    source = _trained_like().eval()
    model = load_weights(TinyResNet(), _save_named(source.state_dict(), tmp_path, "m")).eval()
    x, y = torch.rand(3, 3, 10, 10), torch.tensor([0, 2, 4])
    with CAMHook(source) as hook:
        want = hook.maps(source(x), y, method="grad_cam")
    with CAMHook(model) as hook:
        got = hook.maps(model(x), y, method="grad_cam")
    assert torch.equal(got, want)


# ----- replace_head -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "head"), [(TinyResNet, "fc"), (TinyMobileNet, "classifier.1")], ids=["resnet", "mbv2"]
)
def test_replace_head_swaps_the_last_linear_only(cls: type[nn.Module], head: str) -> None:
    torch.manual_seed(0)
    model = cls(num_classes=1000)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    old = model.get_submodule(head)
    assert replace_head(model, 7) is model
    new = model.get_submodule(head)
    assert isinstance(new, nn.Linear) and new is not old
    assert (new.in_features, new.out_features) == (old.in_features, 7)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        if k.startswith(head + "."):
            assert after[k].shape[0] == 7
        else:
            assert torch.equal(after[k], before[k]), k  # the features are untouched
    assert model.eval()(torch.rand(2, 3, 9, 9)).shape == (2, 7)


def test_replace_head_keeps_bias_device_dtype_and_mode() -> None:
    model = TinyResNet().double()
    model.fc = nn.Linear(8, 5, bias=False, dtype=torch.float64)
    model.eval()
    replace_head(model, 3)
    assert model.fc.bias is None
    assert model.fc.weight.dtype == torch.float64
    assert model.fc.training is False
    assert model.fc.weight.requires_grad


def test_replace_head_with_a_generator_is_reproducible() -> None:
    a = replace_head(TinyResNet(), 4, generator=torch.Generator().manual_seed(3))
    b = replace_head(TinyResNet(), 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.fc.weight, b.fc.weight)
    assert float(a.fc.weight.detach().abs().max()) <= 1 / 8**0.5
    assert torch.equal(a.fc.bias, torch.zeros(4))


def test_replace_head_by_name_and_through_wrappers() -> None:
    model = TinyMobileNet()
    wrapped = nn.DataParallel(model)
    replace_head(wrapped, 2, head="module.classifier.1")
    assert model.classifier[1].out_features == 2
    with CAMHook(model) as hook:  # the new head is what CAM reads
        logits = model.eval()(torch.rand(1, 3, 8, 8))
        assert hook.maps(logits, all_classes=True, method="cam").shape[1] == 2


def test_replace_head_errors() -> None:
    with pytest.raises(RangeError, match="`num_classes` must be >= 1, got 0"):
        replace_head(TinyResNet(), 0)
    with pytest.raises(DTypeError, match="`num_classes` must be an int"):
        replace_head(TinyResNet(), 2.0)  # type: ignore[arg-type]
    with pytest.raises(
        LayerError,
        match=re.escape(
            "must name an nn.Linear or a 1x1 nn.Conv2d (groups 1) of `model`, got Conv2d"
        ),
    ):
        replace_head(TinyResNet(), 2, head="conv1")
    with pytest.raises(LayerError, match="not a module of the model"):
        replace_head(TinyResNet(), 2, head="head")
    with pytest.raises(LayerError, match=re.escape("must have a classifier (an nn.Linear, or")):
        replace_head(nn.Sequential(nn.Conv2d(3, 2, 1)), 2)
    with pytest.raises(DTypeError, match=re.escape("`model` must be an nn.Module")):
        replace_head("resnet", 2)  # type: ignore[type-var]


# ----- freeze_batchnorm -------------------------------------------------------------------


def test_freeze_batchnorm_sets_the_fine_tuning_flags() -> None:
    model = TinyResNet().eval()
    model.layer4[2].training = False  # a flag of the user's, on a model in eval mode
    freeze_batchnorm(model)
    flags = {n: m.training for n, m in model.named_modules()}
    assert not flags["bn1"] and not flags["layer4.1"]
    assert all(v for n, v in flags.items() if n not in ("bn1", "layer4.1"))
    trained = TinyResNet().train()
    trained.relu.training = False  # a model in training mode keeps its other flags
    freeze_batchnorm(trained)
    assert trained.relu.training is False and trained.bn1.training is False
    assert all(p.requires_grad for p in trained.parameters())


def test_freeze_batchnorm_parameters() -> None:
    model = freeze_batchnorm(TinyResNet(), parameters=True)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"bn1.weight", "bn1.bias", "layer4.1.weight", "layer4.1.bias"}


@pytest.mark.parametrize("parameters", [False, True])
def test_fit_after_freeze_batchnorm_keeps_the_statistics(parameters: bool) -> None:
    # The fine-tuning recipe end to end: pretrained weights, a new head, frozen BatchNorm,
    # fit. The running statistics (and, with parameters=True, the affine weights) stay those
    # of the file; the convolutions and the new head learn.
    source = _trained_like()
    model = replace_head(TinyResNet(), 3, generator=torch.Generator().manual_seed(0))
    model.load_state_dict(
        {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}, strict=False
    )
    freeze_batchnorm(model, parameters=parameters)
    g = torch.Generator().manual_seed(0)
    data = ImageDataset(torch.rand(16, 3, 8, 8, generator=g), torch.arange(16) % 3)
    fit(model, data, epochs=1, batch_size=8, generator=g)
    for name in ("bn1", "layer4.1"):
        bn, ref = model.get_submodule(name), source.get_submodule(name)
        assert torch.equal(bn.running_mean, ref.running_mean)
        assert torch.equal(bn.running_var, ref.running_var)
        assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked)
        assert torch.equal(bn.weight, ref.weight) == parameters
    assert not torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.bn1.training is False  # fit gave every module its own flag back


def test_without_freezing_fit_moves_the_statistics() -> None:
    # The contrast that makes the test above meaningful.
    model = _trained_like()
    before = model.bn1.running_mean.clone()
    g = torch.Generator().manual_seed(0)
    data = ImageDataset(torch.rand(16, 3, 8, 8, generator=g), torch.arange(16) % 5)
    fit(model.train(), data, epochs=1, batch_size=8, generator=g)
    assert not torch.equal(model.bn1.running_mean, before)


def test_freeze_batchnorm_refuses_a_non_module() -> None:
    with pytest.raises(DTypeError, match=re.escape("`model` must be an nn.Module, got list")):
        freeze_batchnorm([])  # type: ignore[type-var]
