"""Frozen layers stay frozen: every public entry that takes a model gives each module its own
training flag back, and none updates a frozen BatchNorm's running statistics.

The fine-tuning recipe freezes BatchNorm statistics with ``model.train()`` then ``bn.eval()``.
``model.train(was_training)`` after an evaluation would unfreeze them (it sets every flag);
these tests run each entry on a model frozen that way and compare every flag and buffer.
(The same check on a torchvision ResNet is in ``tests/integration/test_frozen_layers.py``.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from xai_feedback._modes import eval_mode, per_example_batchnorm, train_mode
from xai_feedback.attribution import attribute
from xai_feedback.data import ImageDataset
from xai_feedback.errors import HookError
from xai_feedback.evaluation import road, selectivity
from xai_feedback.hooks import CAMHook
from xai_feedback.objectives import prediction_difference_objective, rrr_objective
from xai_feedback.pcace import capture, pcace
from xai_feedback.proxy import train_with_proxy
from xai_feedback.training import accuracy, fit, predict

K = 4


class BNNet(nn.Module):
    """conv-BN-ReLU twice, dropout, GAP, linear: CAM-ready, with flags worth keeping."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(8, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(x).mean(dim=(2, 3))))


def _frozen() -> tuple[BNNet, ImageDataset]:
    g = torch.Generator().manual_seed(0)
    model = BNNet(g)
    images = torch.rand(24, 1, 12, 12, generator=g)
    with torch.no_grad():  # running statistics that differ from fresh ones
        model(images)
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()  # frozen statistics, the rest trains
    labels = torch.arange(24) % K
    masks = torch.zeros(24, 12, 12, dtype=torch.bool)
    masks[:, :2] = True  # an annotated band, for the penalties that need masks
    return model, ImageDataset(images, labels, masks)


def _state(model: nn.Module) -> tuple[list[bool], list[torch.Tensor]]:
    flags = [m.training for m in model.modules()]
    stats = [b.detach().clone() for name, b in model.named_buffers() if "running" in name]
    return flags, stats


def _explain(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return images.clone()


Entry = Callable[[nn.Module, ImageDataset, str], Any]
"""``(model, data, layer) -> anything``: one public call that takes a model."""

ENTRIES: dict[str, Entry] = {
    "predict": lambda m, d, layer: predict(m, d.images),
    "accuracy": lambda m, d, layer: accuracy(m, d),
    "fit": lambda m, d, layer: fit(m, d, epochs=1, batch_size=8),
    "fit_rrr": lambda m, d, layer: fit(m, d, epochs=1, batch_size=8, objective=rrr_objective()),
    "fit_difference": lambda m, d, layer: fit(
        m, d, epochs=1, batch_size=8, objective=prediction_difference_objective()
    ),
    "attribute_saliency": lambda m, d, layer: attribute(m, d.images, d.labels),
    "attribute_grad_cam": lambda m, d, layer: attribute(
        m, d.images, d.labels, method="grad_cam", layer=layer
    ),
    "attribute_smoothgrad": lambda m, d, layer: attribute(
        m, d.images, d.labels, ensemble="smoothgrad", n_samples=2
    ),
    "attribute_grad_cam_grid": lambda m, d, layer: attribute(
        m, d.images, d.labels, method="grad_cam", layer=layer, size=None, reduce="sum"
    ),
    "road": lambda m, d, layer: road(m, d.images, d.labels, {"x": _explain}, fractions=(0.5,)),
    "selectivity": lambda m, d, layer: selectivity(
        m, d.images, d.labels, {"x": _explain}, patch=d.images.shape[-1] // 2, steps=2
    ),
    "capture": lambda m, d, layer: capture(m, layer, d.images),
    "pcace": lambda m, d, layer: pcace(m, layer, d.images, target=1, n_components=2),
    "train_with_proxy": lambda m, d, layer: train_with_proxy(
        m, d, [1, "p", 1], layer=layer, batch_size=8
    ),
}
"""Every public entry that takes a model (ROAR/KAR take a training function instead)."""


def check_entry_keeps_flags(model: nn.Module, data: ImageDataset, layer: str, entry: str) -> None:
    """Run ``ENTRIES[entry]``; assert every flag and every running statistic is unchanged."""
    flags, stats = _state(model)
    assert flags[0] and not all(flags)  # a model in training mode with frozen layers
    ENTRIES[entry](model, data, layer)
    after_flags, after_stats = _state(model)
    assert after_flags == flags, entry
    for before, now in zip(stats, after_stats, strict=True):  # never updated, even by fit
        torch.testing.assert_close(now, before, rtol=0, atol=0)


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_every_entry_keeps_frozen_batchnorms_frozen(entry: str) -> None:
    model, data = _frozen()
    check_entry_keeps_flags(model, data, "features", entry)


def test_cam_hook_in_eval_mode_restores_each_flag() -> None:
    model, data = _frozen()
    flags, _ = _state(model)
    with CAMHook(model, eval_mode=True) as hook:
        assert not any(m.training for m in model.modules())
        hook.maps(model(data.images), data.labels)
    assert _state(model)[0] == flags


def test_per_example_batchnorm_restores_each_flag() -> None:
    model, _ = _frozen()
    model.drop.eval()  # a second user choice, on another kind of layer
    flags, _ = _state(model)
    with per_example_batchnorm(model):
        assert not any(isinstance(m, nn.BatchNorm2d) and m.training for m in model.modules())
    assert _state(model)[0] == flags


def test_fit_trains_a_model_in_eval_mode_as_a_whole_and_gives_the_flag_back() -> None:
    model, data = _frozen()
    model.eval()
    seen: list[list[bool]] = []

    def objective(net: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append([m.training for m in net.modules()])
        logits = net(batch.images)
        return nn.functional.cross_entropy(logits, batch.labels), logits

    before = [b.clone() for name, b in model.named_buffers() if "running_mean" in name]
    fit(model, data, epochs=1, batch_size=8, objective=objective)
    assert seen and all(all(flags) for flags in seen)  # trained in training mode
    assert not any(m.training for m in model.modules())  # and given back in eval mode
    after = [b for name, b in model.named_buffers() if "running_mean" in name]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_mode_managers_restore_flags_when_the_block_raises() -> None:
    model, _ = _frozen()
    flags, _ = _state(model)
    for manager in (eval_mode, train_mode):
        with pytest.raises(RuntimeError, match="boom"), manager(model):
            raise RuntimeError("boom")
        assert _state(model)[0] == flags


def test_switches_are_counted_across_threads_and_restore_each_own_value() -> None:
    """A enters, B enters, A exits: B still holds the switch; B exits: each own value back."""
    import threading

    from xai_feedback._modes import frozen_parameters, switched

    model, _ = _frozen()
    flags, _ = _state(model)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def first() -> None:
        with per_example_batchnorm(model):
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def second() -> None:
        a_in.wait(5)
        with per_example_batchnorm(model):
            b_in.set()
            a_out.wait(5)
            seen.append(any(isinstance(m, nn.BatchNorm2d) and m.training for m in model.modules()))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [False]  # B's block kept running statistics after A left
    assert _state(model)[0] == flags

    frozen = next(iter(model.parameters()))
    frozen.requires_grad_(False)  # the user froze one parameter
    with frozen_parameters(model), frozen_parameters(model):
        assert not any(p.requires_grad for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()][:2] == [False, True]
    norm = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with (
        switched([(norm, "training")], False),
        pytest.raises(HookError, match="training"),
        switched([(norm, "training")], True),
    ):
        pass


def test_input_gradient_penalty_on_fused_attention_trains() -> None:
    """RRR's double backward through scaled-dot-product attention needs the math kernel."""
    from tests.test_relevance import TinyViT
    from xai_feedback.training import Batch

    model = TinyViT("timm").train()  # timm-style: F.scaled_dot_product_attention
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 8, 8, generator=g)
    masks = torch.zeros(4, 8, 8)
    masks[:, :, :2] = 1
    batch = Batch(x, torch.tensor([0, 1, 2, 0]), masks, epoch=0, total_epochs=1, step=0)
    loss, _ = rrr_objective(None, 10.0)(model, batch)
    loss.backward()
    qkv = model.blocks[0].attn.qkv.weight.grad
    assert qkv is not None and bool(torch.isfinite(qkv).all())
    # the penalty's own gradient reaches the attention (the double backward ran)
    model.zero_grad()
    rrr_objective(None, 10.0)(model, batch)[0].backward()
    with_penalty = model.blocks[0].attn.qkv.weight.grad.clone()
    model.zero_grad()
    rrr_objective(None, 0.0)(model, batch)[0].backward()
    assert not torch.allclose(with_penalty, model.blocks[0].attn.qkv.weight.grad)
