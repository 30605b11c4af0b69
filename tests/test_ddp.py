"""The CAM penalty inside a DistributedDataParallel training step (gloo, 2 CPU processes).

Two ranks each take one half of a global batch; DDP averages their gradients. The CAM penalty
of a batch is a mean over its images (as the cross-entropy is), so with equal shards the
averaged gradient must equal the gradient of one process on the whole batch, whenever the
images do not interact in the forward: BatchNorm in eval mode (running statistics), under
bf16 autocast, in channels_last. BatchNorm in *train* mode normalizes each shard by its own
statistics, so DDP gives the mean of the two per-shard gradients instead (tested as such,
and that it differs from the global one); SyncBatchNorm would restore equality, but its
forward refuses CPU tensors in torch (``ValueError: SyncBatchNorm expected input tensor to be
on GPU ...``, and ``DistributedDataParallel`` refuses a CPU model holding one: ``ValueError:
SyncBatchNorm layers only work with GPU modules``): the test checks exactly that, or equality
if a later torch accepts CPU.

All cases run in one spawn of 2 processes (a few seconds); the references are computed here.
"""

from __future__ import annotations

import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from xai_feedback.hooks import CAMHook
from xai_feedback.losses import CenterPenalty
from xai_feedback.models import GAPNet

WORLD = 2
BATCH = 8  # global batch, 4 images per rank
LAM = 10.0
CASES = ("eval_bn", "train_bn", "syncbn", "bf16", "channels_last", "hook_on_ddp")

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)


def _model() -> GAPNet:
    g = torch.Generator().manual_seed(0)
    model = GAPNet(width=4, depth=3, generator=g)
    with torch.no_grad():  # non-trivial running statistics for the eval-mode cases
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=g))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=g))
    return model


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(BATCH, 1, 16, 16, generator=g), torch.randint(0, 10, (BATCH,), generator=g)


def _setup(case: str, model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """The model mode / layout of a case (same in the DDP run and in the references)."""
    model.train(case in ("train_bn", "syncbn"))
    if case == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x


def _loss(model: nn.Module, hooked: nn.Module, x: torch.Tensor, y: torch.Tensor, case: str) -> Any:
    """The three lines of the recipe: hook, maps of all classes, cross-entropy + penalty."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "bf16"):
        with CAMHook(hooked) as hook:
            logits = model(x)
            maps = hook.maps(logits, all_classes=True)
        return F.cross_entropy(logits.float(), y) + LAM * CenterPenalty(sigma=0.7)(maps.float())


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        x, y = _batch()
        shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        for case in CASES:
            model = _model()
            if case == "syncbn":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model, xs = _setup(case, model, x[shard])
            result: dict[str, Any] = {}
            try:
                ddp = nn.parallel.DistributedDataParallel(model)
                hooked = ddp if case == "hook_on_ddp" else ddp.module
                loss = _loss(ddp, hooked, xs, y[shard], case)
                loss.backward()
                mean_loss = loss.detach().clone()
                dist.all_reduce(mean_loss)
                result = {"loss": mean_loss / WORLD, "grads": _grads(ddp.module)}
            except Exception as error:  # recorded: the test decides what is acceptable
                result = {"error": f"{type(error).__name__}: {error}"}
            if rank == 0:
                torch.save(result, Path(out) / f"{case}.pt")
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("ddp")
    context = mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2 DDP processes did not finish within 120 s")
    return {case: torch.load(out / f"{case}.pt") for case in CASES}


def _reference(case: str, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """One process, plain model (no DDP), on the images ``x``."""
    model, xs = _setup(case, _model(), x)
    loss = _loss(model, model, xs, y, case)
    loss.backward()
    return loss.detach(), _grads(model)


def _close(
    got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], rtol: float, atol: float
) -> None:
    assert got.keys() == want.keys() and len(want) > 0
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("case", ["eval_bn", "channels_last"])
def test_ddp_equals_one_process_on_the_global_batch(ddp_results: dict, case: str) -> None:
    x, y = _batch()
    loss, grads = _reference(case, x, y)
    result = ddp_results[case]
    assert "error" not in result, result.get("error")
    torch.testing.assert_close(result["loss"], loss, rtol=1e-5, atol=1e-6)
    _close(result["grads"], grads, rtol=1e-4, atol=1e-6)


def test_ddp_under_bf16_autocast_matches_within_bf16_precision(ddp_results: dict) -> None:
    x, y = _batch()
    loss, grads = _reference("bf16", x, y)
    result = ddp_results["bf16"]
    assert "error" not in result, result.get("error")
    torch.testing.assert_close(result["loss"], loss, rtol=2e-2, atol=1e-3)
    got = torch.cat([g.flatten() for g in result["grads"].values()])
    want = torch.cat([g.flatten() for g in grads.values()])
    assert float((got - want).norm() / want.norm()) < 3e-2
    # and bf16 is really in use: the fp32 gradient differs by more than fp32 rounding
    _, fp32 = _reference("eval_bn", x, y)
    exact = torch.cat([g.flatten() for g in fp32.values()])
    assert float((want - exact).norm() / exact.norm()) > 1e-5


def test_train_mode_batchnorm_without_sync_averages_per_shard_gradients(
    ddp_results: dict,
) -> None:
    x, y = _batch()
    halves = [slice(r * BATCH // WORLD, (r + 1) * BATCH // WORLD) for r in range(WORLD)]
    shards = [_reference("train_bn", x[h], y[h]) for h in halves]
    result = ddp_results["train_bn"]
    assert "error" not in result, result.get("error")
    mean_loss = sum(s[0] for s in shards) / WORLD
    mean_grads = {n: sum(s[1][n] for s in shards) / WORLD for n in shards[0][1]}
    torch.testing.assert_close(result["loss"], mean_loss, rtol=1e-5, atol=1e-6)
    _close(result["grads"], mean_grads, rtol=1e-4, atol=1e-6)
    # ... which is not the global-batch gradient (each shard has its own batch statistics)
    _, global_grads = _reference("train_bn", x, y)
    got = torch.cat([g.flatten() for g in result["grads"].values()])
    want = torch.cat([g.flatten() for g in global_grads.values()])
    assert float((got - want).norm() / want.norm()) > 1e-3


def test_syncbatchnorm_equals_the_global_batch_or_refuses_cpu(ddp_results: dict) -> None:
    result = ddp_results["syncbn"]
    if "error" in result:  # torch's SyncBatchNorm syncs only GPU (cuda/xpu/hpu) modules
        assert result["error"] in (
            "ValueError: SyncBatchNorm layers only work with GPU modules",  # DDP(...) refuses
            "ValueError: SyncBatchNorm expected input tensor to be on GPU or XPU or privateuseone",
        )
        return
    x, y = _batch()
    loss, grads = _reference("syncbn", x, y)  # plain BatchNorm, train mode, whole batch
    torch.testing.assert_close(result["loss"], loss, rtol=1e-5, atol=1e-6)
    _close(result["grads"], grads, rtol=1e-4, atol=1e-5)


def test_camhook_on_the_ddp_wrapper(ddp_results: dict) -> None:
    """``CAMHook(ddp_model)`` must hook the wrapped model's CAM layer, not a lookalike."""
    x, y = _batch()
    loss, grads = _reference("eval_bn", x, y)
    result = ddp_results["hook_on_ddp"]
    assert "error" not in result, result.get("error")
    torch.testing.assert_close(result["loss"], loss, rtol=1e-5, atol=1e-6)
    _close(result["grads"], grads, rtol=1e-4, atol=1e-6)
