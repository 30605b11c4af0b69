"""The CAM penalty inside a LightningModule.training_step trains exactly like a plain loop.

examples/09_lightning.py and examples/11_plain_loop.py use the same data, model, optimizer and
batch order; their weights after one epoch must agree (bitwise on CPU, measured). Over several
epochs the orders part: Lightning draws the shuffles of later epochs from the loader's
generator on its own schedule, so epoch 2 sees another permutation. Needs ``lightning``
(integration tier).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

from xai_feedback.data import confounded_digits
from xai_feedback.models import GAPNet

pytest.importorskip("lightning", reason="needs lightning (integration tier)")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name.replace(".py", ""), EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lightning_training_step_equals_the_plain_loop() -> None:
    data = confounded_digits("train", "frame", size=2, seed=0).subset(torch.arange(256))  # 4 steps
    lit = _load("09_lightning.py").train(data, epochs=1)
    plain = _load("11_plain_loop.py").train(data, epochs=1)
    without_penalty = _load("11_plain_loop.py").train(data, epochs=1, lam=0.0)
    start = GAPNet(width=8, generator=torch.Generator().manual_seed(0)).state_dict()
    lit_state, plain_state = lit.state_dict(), plain.state_dict()
    assert lit_state.keys() == plain_state.keys()
    for name, value in plain_state.items():
        torch.testing.assert_close(lit_state[name], value, rtol=1e-5, atol=1e-6, msg=name)
    # it trained, and the penalty is part of what it trained on
    weight = "classifier.weight"
    assert not torch.allclose(plain_state[weight], start[weight])
    assert not torch.allclose(plain_state[weight], without_penalty.state_dict()[weight])
