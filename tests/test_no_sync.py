"""The CAM-penalty training step reads no tensor data from Python (issue 16: GPU-ready).

On the CPU every check may read data cheaply, so the suite forces the accelerator path
(``on_accelerator`` -> True) and makes every way of reading a tensor from Python raise: a
training step that syncs would fail here as it would stall a GPU. On CUDA the same step runs
under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from xai_feedback import _checks
from xai_feedback.hooks import CAMHook
from xai_feedback.losses import CenterPenalty, MaskPenalty
from xai_feedback.models import GAPNet


def _step(model: GAPNet, x: torch.Tensor, y: torch.Tensor, method: str, masks: torch.Tensor):
    with CAMHook(model) as hook:
        logits = model(x)
        maps = hook.maps(logits, y, method=method, all_classes=True, relu=False)
        target_maps = hook.maps(logits, y, method=method, relu=False)
    loss = (
        F.cross_entropy(logits, y)
        + CenterPenalty()(maps)
        + CenterPenalty(classes="target")(maps, target=y)
        + MaskPenalty()(target_maps, masks=masks)
    )
    loss.backward()
    return loss


@contextmanager
def _no_python_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the training step read tensor data from Python (a host sync)")

    with monkeypatch.context() as m:
        m.setattr(_checks, "on_accelerator", lambda x: True)
        for name in ("__bool__", "item", "tolist", "__int__", "__float__", "__index__"):
            m.setattr(torch.Tensor, name, refuse)
        yield


@pytest.mark.parametrize("method", ["cam", "grad_cam", "hires_cam", "grad_cam_pp"])
def test_cam_penalty_step_has_no_python_level_sync(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = torch.Generator().manual_seed(0)
    model = GAPNet(width=4, generator=g)
    x, y = torch.rand(4, 1, 28, 28, generator=g), torch.tensor([0, 3, 5, 9])
    masks = torch.zeros(4, 28, 28, dtype=torch.bool)
    masks[:, :2] = True
    with CAMHook(model) as hook:  # the CAM head check reads data once per model: do it first
        hook.maps(model(x), y, method="cam")
    expected = _step(model, x, y, method, masks).detach().clone()
    model.zero_grad()
    with _no_python_reads(monkeypatch):
        loss = _step(model, x, y, method, masks)
    assert torch.equal(loss.detach(), expected)  # same value through the assertion path


def test_device_side_checks_still_refuse_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_checks, "on_accelerator", lambda x: True)
    with pytest.raises(RuntimeError, match=r"`maps` must be finite"):
        CenterPenalty()(torch.full((1, 2, 5, 5), float("nan")))
    with pytest.raises(RuntimeError, match=r"`target` must hold classes in \[0, 2\)"):
        CenterPenalty(classes="target")(torch.zeros(2, 2, 5, 5), target=torch.tensor([0, -1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_step_under_sync_debug_mode_error() -> None:
    model = GAPNet(width=4).cuda()
    x, y = torch.rand(4, 1, 28, 28, device="cuda"), torch.tensor([0, 3, 5, 9], device="cuda")
    masks = torch.zeros(4, 28, 28, dtype=torch.bool, device="cuda")
    _step(model, x, y, "cam", masks)  # first call: the once-per-model CAM head check
    torch.cuda.set_sync_debug_mode("error")
    try:
        for method in ("cam", "grad_cam", "grad_cam_pp"):
            _step(model, x, y, method, masks)
    finally:
        torch.cuda.set_sync_debug_mode("default")
