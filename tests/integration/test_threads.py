"""CAMHooks used from two threads on one model, and nested hooks: each hook sees the
activations of its own forward, never the other thread's."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from torch import nn

from tests.integration._zoo import ZOO, model_of
from xai_feedback.errors import XAIFeedbackError
from xai_feedback.hooks import CAMHook

ARCH = ZOO[0]  # torchvision resnet18
TARGET = torch.tensor([3, 7])


def _hand(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """Signed Grad-CAM (paper scale) of ``layer3`` or ``layer4`` by hand."""
    h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    a3 = model.layer3(model.layer2(model.layer1(h)))
    a4 = model.layer4(a3)
    logits = model.fc(torch.flatten(model.avgpool(a4), 1))
    acts = a3 if layer == "layer3" else a4
    (grads,) = torch.autograd.grad(logits.gather(1, TARGET[:, None]).sum(), acts)
    return (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1).detach()


def _maps(hook: CAMHook, logits: torch.Tensor) -> torch.Tensor:
    return hook.maps(logits, TARGET, method="grad_cam", scale="paper", relu=False).detach()


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    scale = float(want.abs().max().clamp_min(1e-12))
    return bool(torch.allclose(got, want, rtol=0, atol=1e-4 * scale))


def _inputs(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return [torch.rand(2, 3, 64, 64, generator=g) for _ in range(n)]


@pytest.mark.parametrize("layers", [("layer4", "layer4"), ("layer3", "layer4")])
def test_two_threads_two_hooks_one_model(layers: tuple[str, str]) -> None:
    model = copy.deepcopy(model_of(ARCH))
    xs = _inputs(2)
    want = [_hand(model, x, layer) for x, layer in zip(xs, layers, strict=True)]
    rounds = 10
    start = threading.Barrier(2)
    results: list[list[torch.Tensor | BaseException]] = [[], []]

    def worker(i: int) -> None:
        try:
            start.wait()
            for _ in range(rounds):
                with CAMHook(model, layers[i]) as hook:
                    logits = model(xs[i])
                    results[i].append(_maps(hook, logits))
        except BaseException as error:  # surfaced in the main thread below
            results[i].append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i in range(2):
        assert len(results[i]) == rounds or isinstance(results[i][-1], XAIFeedbackError), results[i]
        for got in results[i]:
            if isinstance(got, XAIFeedbackError):
                # a refusal is acceptable only if it names the concurrency problem
                assert "thread" in str(got).lower(), str(got)
                continue
            assert isinstance(got, torch.Tensor), got
            assert _close(got, want[i]), f"thread {i} got another forward's maps"


def test_two_threads_one_hooked_one_plain_forward() -> None:
    # Thread 0 explains; thread 1 only runs the model (e.g. evaluation) at the same time.
    model = copy.deepcopy(model_of(ARCH))
    x0, x1 = _inputs(2)
    want = _hand(model, x0, "layer4")
    start = threading.Barrier(2)
    got: list[torch.Tensor | BaseException] = []

    def explain() -> None:
        try:
            start.wait()
            for _ in range(6):
                with CAMHook(model) as hook:
                    logits = model(x0)
                    got.append(_maps(hook, logits))
        except BaseException as error:
            got.append(error)

    def plain() -> None:
        start.wait()
        with torch.no_grad():
            for _ in range(12):
                model(x1)

    threads = [threading.Thread(target=explain), threading.Thread(target=plain)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(got) == 6
    for maps in got:
        assert isinstance(maps, torch.Tensor), maps
        assert _close(maps, want)


def test_nested_hooks_on_two_layers() -> None:
    model = copy.deepcopy(model_of(ARCH))
    (x,) = _inputs(1)
    with CAMHook(model, "layer3") as h3, CAMHook(model, "layer4") as h4:
        logits = model(x)
        m3, m4 = _maps(h3, logits), _maps(h4, logits)
    assert _close(m3, _hand(model, x, "layer3"))
    assert _close(m4, _hand(model, x, "layer4"))


def test_nested_hooks_on_the_same_layer() -> None:
    model = copy.deepcopy(model_of(ARCH))
    (x,) = _inputs(1)
    want = _hand(model, x, "layer4")
    with CAMHook(model) as outer:
        with CAMHook(model, "layer4") as inner:
            logits = model(x)
            assert _close(_maps(inner, logits), want)
        # the inner hook is gone; the outer one still holds this forward's activations
        assert _close(_maps(outer, logits), want)
    with torch.no_grad():  # no hook left behind
        assert not model.layer4._forward_hooks


def test_reentering_one_hook_is_refused() -> None:
    model = model_of(ARCH)
    hook = CAMHook(model)
    with hook, pytest.raises(XAIFeedbackError), hook:
        pass
