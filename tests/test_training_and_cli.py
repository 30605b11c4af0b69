from pathlib import Path

import pytest
import torch

from xai_feedback import RangeError
from xai_feedback.cli import main
from xai_feedback.data import load_digits
from xai_feedback.models import GAPNet
from xai_feedback.training import Batch, accuracy, fit, predict


def test_fit_is_reproducible_and_restores_eval_flags() -> None:
    data = load_digits("train").subset(torch.arange(200))
    states = []
    for _ in range(2):
        g = torch.Generator().manual_seed(0)
        model = GAPNet(width=4, generator=g)
        fit(model, data, epochs=1, generator=g)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    model.train()
    predict(model, data.images[:5])
    assert model.training


def test_custom_objective_sees_batches_and_masks() -> None:
    from xai_feedback.data import confounded_digits

    data = confounded_digits("train", "frame").subset(torch.arange(100))
    seen: list[Batch] = []

    def objective(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(batch)
        logits = model(batch.images)
        return torch.nn.functional.cross_entropy(logits, batch.labels), logits

    fit(GAPNet(width=4), data, epochs=2, batch_size=32, objective=objective)
    assert len(seen) == 8 and seen[-1].epoch == 1 and seen[-1].step == 7
    assert all(b.masks is not None and b.masks.shape[0] == b.images.shape[0] for b in seen)
    assert sum(b.images.shape[0] for b in seen) == 200


def test_fit_bad_arguments() -> None:
    data = load_digits("test")
    with pytest.raises(RangeError, match="`epochs` must be >= 1"):
        fit(GAPNet(width=4), data, epochs=0)
    with pytest.raises(RangeError, match="`lr` must be > 0"):
        fit(GAPNet(width=4), data, lr=0.0)


def test_accuracy_matches_manual_count() -> None:
    data = load_digits("test")
    model = GAPNet(width=4, generator=torch.Generator().manual_seed(0))
    logits = predict(model, data.images)
    manual = sum(
        int(p == y) for p, y in zip(logits.argmax(1).tolist(), data.labels.tolist(), strict=True)
    )
    assert accuracy(model, data) == pytest.approx(manual / len(data))


@pytest.mark.slow
def test_demo_shows_the_shortcut(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import importlib.util

    figure = tmp_path / "maps.png"
    assert main(["demo", "--epochs", "8", "--vanilla-only", "--figure", str(figure)]) == 0
    out = capsys.readouterr().out
    if importlib.util.find_spec("matplotlib") is None:
        assert "no figure: matplotlib is not installed" in out and not figure.exists()
    else:
        assert f"Figure: {figure}" in out
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert figure.stat().st_size > 10_000
    values = {}
    for line in out.splitlines():
        for key in ("train accuracy", "clean test accuracy", "confound-test accuracy"):
            if line.startswith(key):
                values[key] = float(line.split()[-1])
    assert values["train accuracy"] > 0.95
    assert values["confound-test accuracy"] < 0.6 < values["train accuracy"]


class _Recorder(torch.nn.Module):
    """A linear classifier that keeps the images of its last forward."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(28 * 28, 10)
        self.seen = torch.empty(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.detach().clone()
        return self.linear(x.flatten(1))


def test_periphery_arm_randomizes_only_the_periphery() -> None:
    from xai_feedback.data import confounded_digits
    from xai_feedback.functional import periphery_mask
    from xai_feedback.objectives import periphery_objective

    region = periphery_mask(28, 28)
    # the frame confound lies inside the periphery, the digits' center outside it
    assert not (confounded_digits("train", "frame").masks.any(0) & ~region).any()
    assert not region[10:18, 10:18].any()
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    batch = Batch(images, torch.arange(8), None, 0, 0, 1)
    seen = []
    for seed in (3, 3, 4):
        model = _Recorder()
        objective = periphery_objective(generator=torch.Generator().manual_seed(seed))
        loss, logits = objective(model, batch)
        assert logits.shape == (8, 10) and loss.ndim == 0
        seen.append(model.seen)
    x = seen[0]
    assert x.shape == (24, 1, 28, 28)  # the batch, then a swap and a constant copy of it
    assert torch.equal(x[:8], images)
    for copy in (x[8:16], x[16:]):
        changed = (copy != images).any(1)  # (8, 28, 28)
        assert not changed[:, ~region].any()  # the center is the original's
        assert changed[:, region].all()  # the whole periphery is redrawn
    # the swap copy takes the periphery of other images of the batch; the constant one is flat
    swapped = x[8:16, 0][:, region]
    assert all(
        any(torch.equal(swapped[i], images[j, 0][region]) for j in range(8) if j != i)
        for i in range(8)
    )
    assert torch.all(x[16:, 0][:, region].std(1) == 0)
    # deterministic in the generator's seed
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[2])


def test_periphery_arm_trains_on_a_small_subset() -> None:
    from xai_feedback.data import confounded_digits, load_digits
    from xai_feedback.demo import ConfoundSetup, run_confounded
    from xai_feedback.objectives import periphery_objective

    setup = ConfoundSetup(epochs=1, width=4, batch_size=32)
    train = confounded_digits("train", "frame").subset(torch.arange(96))
    evals = {"clean_test": load_digits("test").subset(torch.arange(40))}
    run, model = run_confounded(
        setup,
        method="periphery counterexamples",
        objective=periphery_objective(generator=torch.Generator().manual_seed(0)),
        train_data=train,
        evals=evals,
    )
    assert run.method == "periphery counterexamples" and isinstance(model, GAPNet)
    assert 0.0 <= run.train_accuracy <= 1.0 and 0.0 <= run.clean_accuracy <= 1.0


def test_demo_runs_all_three_arms(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import importlib.util

    from xai_feedback.demo import DEMO_ARMS, ConfoundSetup, demo

    assert DEMO_ARMS == ("vanilla", "CAM penalty", "periphery counterexamples")
    figure = tmp_path / "maps.png"
    runs = demo(ConfoundSetup(epochs=1, width=4), figure=figure)
    assert [r.method for r in runs] == list(DEMO_ARMS)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "vanilla" in line and "CAM" in line)
    assert header.split() == ["vanilla", "CAM", "penalty", "periphery", "counterexamples"]
    for key in ("train accuracy", "clean test accuracy", "confound-test accuracy"):
        line = next(line for line in out.splitlines() if line.startswith(key))
        assert len(line.split()[-3:]) == 3 and all(0 <= float(v) <= 1 for v in line.split()[-3:])
    assert "Recommended without annotations (objects centered): periphery counterexamples" in out
    if importlib.util.find_spec("matplotlib") is not None:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(RangeError):
        demo(ConfoundSetup(epochs=1, width=4), arms=["nope"], figure=None)


def test_cli_unknown_benchmark(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("XAI_FEEDBACK_BENCHMARKS", raising=False)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert main(["bench", "nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_one_flag_silences_every_progress_bar(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from xai_feedback._progress import ENV_FLAG, progress_enabled
    from xai_feedback.data import load_digits
    from xai_feedback.models import GAPNet
    from xai_feedback.training import fit

    data = load_digits("train").subset(torch.arange(32))
    monkeypatch.setenv(ENV_FLAG, "1")
    assert progress_enabled(True) and not progress_enabled(False)
    fit(GAPNet(width=4), data, epochs=1, batch_size=16, progress="flagged")
    assert "flagged" in capsys.readouterr().err
    monkeypatch.setenv(ENV_FLAG, "0")
    assert not progress_enabled(True)
    fit(GAPNet(width=4), data, epochs=1, batch_size=16, progress="flagged")
    assert "flagged" not in capsys.readouterr().err


def test_periphery_objective_takes_the_size_from_the_batch() -> None:
    from xai_feedback.functional import periphery_mask
    from xai_feedback.objectives import periphery_objective

    images = torch.rand(4, 1, 20, 36, generator=torch.Generator().manual_seed(1))
    batch = Batch(images, torch.arange(4), None, 0, 0, 1)
    model = _Recorder()
    model.linear = torch.nn.Linear(20 * 36, 10)
    objective = periphery_objective(sigma=0.5, generator=torch.Generator().manual_seed(0))
    objective(model, batch)
    region = periphery_mask(20, 36, 0.5)
    changed = (model.seen[4:] != images.repeat(2, 1, 1, 1)).any(1)
    assert changed[:, region].all() and not changed[:, ~region].any()
    with pytest.raises(RangeError, match="threshold"):
        periphery_objective(threshold=1.5)
