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
