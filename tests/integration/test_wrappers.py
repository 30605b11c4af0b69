"""Wrapped models: DataParallel, DistributedDataParallel (gloo, world size 1), torch.compile
and a plain nn.Sequential wrapper give the same layer names and the same maps as the bare
model - or a clear XAIFeedbackError, never silently different maps."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tests.integration._zoo import ZOO, images, model_of, reference_grads
from xai_feedback.errors import XAIFeedbackError
from xai_feedback.hooks import CAMHook

ARCH = ZOO[0]  # torchvision resnet18
TARGET = torch.tensor([3, 7])


def _bare() -> tuple[nn.Module, torch.Tensor, dict[str, torch.Tensor]]:
    """A fresh copy of the bare model, its input, and its maps by the hand reference."""
    model = copy.deepcopy(model_of(ARCH))
    x = images(ARCH)
    acts, grads, logits = reference_grads(ARCH, x, TARGET)
    with torch.no_grad():
        cam = torch.einsum("bc,bchw->bhw", model.fc.weight[TARGET], acts)
    # the hook's maps are signed unless relu=True (one sign rule with the objectives)
    grad_cam = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1)
    return model, x, {"logits": logits, "cam": cam, "grad_cam": grad_cam}


def _maps(wrapped: nn.Module, x: torch.Tensor, layer: str | None) -> tuple[str, dict]:
    with CAMHook(wrapped, layer) as hook:
        logits = wrapped(x)
        out = {
            "logits": logits.detach(),
            "cam": hook.maps(logits, TARGET, method="cam").detach(),
            "grad_cam": hook.maps(logits, TARGET, method="grad_cam", scale="paper").detach(),
        }
        return hook.layer_name, out


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    for key, value in want.items():
        scale = float(value.abs().max().clamp_min(1e-12))
        assert torch.allclose(got[key], value, rtol=0, atol=1e-4 * scale), key


@pytest.mark.parametrize("layer", [None, "layer4", "module.layer4"])
def test_data_parallel(layer: str | None) -> None:
    model, x, want = _bare()
    name, got = _maps(nn.DataParallel(model), x, layer)
    assert name == "layer4"  # names of the unwrapped model
    _assert_same(got, want)


@pytest.fixture
def process_group(tmp_path: Path) -> Iterator[None]:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.usefixtures("process_group")
@pytest.mark.parametrize("layer", [None, "module.layer4"])
def test_distributed_data_parallel(layer: str | None) -> None:
    model, x, want = _bare()
    ddp = nn.parallel.DistributedDataParallel(model)
    name, got = _maps(ddp, x, layer)
    assert name == "layer4"
    _assert_same(got, want)
    # twice: DDP's reducer state must survive a map computation without a backward
    _, again = _maps(ddp, x, layer)
    _assert_same(again, want)


@pytest.mark.usefixtures("process_group")
def test_distributed_data_parallel_training_step_with_the_penalty() -> None:
    # A CAM-penalty step through DDP gives the same parameter gradients as on the bare model.
    model, x, _ = _bare()
    model.train()
    twin = copy.deepcopy(model)
    ddp = nn.parallel.DistributedDataParallel(model)

    def step(net: nn.Module) -> None:
        with CAMHook(net) as hook:
            logits = net(x)
            maps = hook.maps(logits, TARGET, method="grad_cam", relu=False)
        (F.cross_entropy(logits, TARGET) + maps.pow(2).mean()).backward()

    step(ddp)
    step(twin)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name


def _compiled(model: nn.Module, backend: str) -> nn.Module:
    torch._dynamo.reset()
    return torch.compile(model, backend=backend)


# aot_eager traces the backward too: a tensor captured by a forward hook inside the compiled
# graph is then not connected to the logits' autograd graph (checked on torch 2.14.1).
BACKENDS = ["eager", "aot_eager"]


def _maps_or_clear_error(fn: Callable[[], tuple[str, dict]]) -> tuple[str, dict] | None:
    try:
        return fn()
    except XAIFeedbackError as error:
        # A refusal must say what is wrong in words, naming the compile wrapper.
        assert "compile" in str(error).lower(), str(error)
        return None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layer", [None, "layer4", "_orig_mod.layer4"])
def test_torch_compile_fresh(backend: str, layer: str | None) -> None:
    model, x, want = _bare()
    compiled = _compiled(model, backend)
    result = _maps_or_clear_error(lambda: _maps(compiled, x, layer))
    if result is not None:
        name, got = result
        assert name == "layer4"
        _assert_same(got, want)
    with torch.no_grad():  # after the block, no stale hook changes the compiled model
        assert torch.allclose(compiled(x), want["logits"], atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_already_traced_without_the_hook(backend: str) -> None:
    # The graph was compiled before the hook existed: dynamo does not guard on hooks added
    # later, so a naive forward hook is skipped. Correct maps or a clear error, not stale ones.
    model, x, want = _bare()
    compiled = _compiled(model, backend)
    with torch.no_grad():
        compiled(x)
    result = _maps_or_clear_error(lambda: _maps(compiled, x, None))
    if result is not None:
        _assert_same(result[1], want)
    # and a different batch inside the block gives that batch's maps, not cached ones
    x2 = x.flip(0)
    acts, grads, _ = reference_grads(ARCH, x2, TARGET)
    want2 = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1)  # signed, as the hook
    result2 = _maps_or_clear_error(lambda: _maps(compiled, x2, None))
    if result2 is not None:
        scale = float(want2.abs().max())
        assert torch.allclose(result2[1]["grad_cam"], want2, rtol=0, atol=1e-4 * scale)


def test_sequential_wrapper_with_dotted_name() -> None:
    model, x, want = _bare()
    wrapped = nn.Sequential(model)
    name, got = _maps(wrapped, x, "0.layer4")
    assert name == "0.layer4"
    _assert_same(got, want)


def test_layer_outside_the_model_is_refused() -> None:
    model, _, _ = _bare()
    other = copy.deepcopy(model)
    with pytest.raises(XAIFeedbackError):
        CAMHook(model, other.layer4)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="inductor needs a C compiler")
def test_torch_compile_inductor() -> None:
    # One case only: inductor compiles take tens of seconds on two cores.
    model, x, want = _bare()
    compiled = _compiled(model, "inductor")
    result = _maps_or_clear_error(lambda: _maps(compiled, x, None))
    if result is not None:
        assert result[0] == "layer4"
        _assert_same(result[1], want)
