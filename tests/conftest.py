"""Shared fixtures: devices (CPU always, CUDA when present), dtypes, gradcheck helpers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every device this machine has."""
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    """The floating dtypes every kernel must follow."""
    return request.param


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def gradcheck64(
    fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], *, second_order: bool = True
) -> None:
    """gradcheck (and gradgradcheck) ``fn`` in float64 with inputs that require grad."""
    inputs64 = tuple(
        x.detach().to(torch.float64).requires_grad_(x.is_floating_point()) for x in inputs
    )
    assert torch.autograd.gradcheck(fn, inputs64, eps=1e-6, atol=1e-5, rtol=1e-4)
    if second_order:
        assert torch.autograd.gradgradcheck(fn, inputs64, eps=1e-6, atol=1e-5, rtol=1e-4)


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist each worker gets one thread, so 2 workers use the 2 cores
    # without oversubscription.
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
