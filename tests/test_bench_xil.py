"""bench xil: Decoy-FMNIST by the XIL typology's protocol (smoke run, resume, selection)."""

import json
from pathlib import Path

import pytest
import torch

from xai_feedback.cli import find_benchmarks, load_benchmark
from xai_feedback.data import load_fashion_mnist
from xai_feedback.errors import MissingDataError

xil = load_benchmark("xil", find_benchmarks(Path(__file__).parent))
from _decoy import decoy_levels  # noqa: E402 (the benchmarks folder is on the path now)

try:
    load_fashion_mnist("test")
except MissingDataError:  # pragma: no cover - Fashion-MNIST's files are not installed
    pytest.skip("Fashion-MNIST's files are not installed", allow_module_level=True)

SMALL = ["--quick", "--train=512", "--test=256"]


@pytest.fixture
def ghost(monkeypatch: pytest.MonkeyPatch) -> None:
    """An arm whose loss the library lacks (as rbr/cdep/hint/rrr_g until they are merged)."""
    arm = xil.Arm("ghost", "a loss not in the library", xil._peer("no_such_objective"))
    monkeypatch.setitem(xil.ARMS, "ghost", arm)


def test_data_follow_the_protocol() -> None:
    data = xil.load_data(1.0, 300, 300, False)
    train, clean, tied = data["train"], data["oracle_train"], data["tied_test"]
    assert train.masks is not None and tied.masks is not None
    assert len(train) == 300 and len(data["decoy_test"]) == 300
    level = train.images[:, 0][train.masks].reshape(300, 16)[:, 0]
    torch.testing.assert_close(level, decoy_levels(train.labels))  # 255 - 25 y, tied
    assert torch.equal(clean.images, load_fashion_mnist("train").images[:300])
    assert torch.equal(data["clean_test"].images, load_fashion_mnist("test").images[:300])
    random = data["decoy_test"]
    assert random.masks is not None
    rlevel = random.images[:, 0][random.masks].reshape(300, 16)[:, 0]
    assert float((rlevel == decoy_levels(random.labels)).float().mean()) < 0.3  # not tied
    x255 = xil.load_data(255.0, 300, 300, False)["train"].images
    torch.testing.assert_close(x255, train.images * 255)


def test_quick_run_writes_tables_and_resumes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    ghost: None,
) -> None:
    args = [*SMALL, "--arms=vanilla,oracle,ce,ghost", "--out", str(tmp_path)]
    assert xil.main(args) == 0
    out = capsys.readouterr().out
    assert "arm ghost: unavailable" in out
    table = (tmp_path / "table-unit-e1-n512.md").read_text()
    for arm in ("vanilla", "oracle", "ce"):
        assert f"| {arm} | {xil.PUBLISHED[arm]} |" in table
    assert "| ghost | - | unavailable |" in table
    assert "Learning curve" in table
    runs = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "runs").rglob("*.json"))
    assert runs == [f"runs/unit-e1-n512/{a}/seed0.json" for a in ("ce", "oracle", "vanilla")]
    record = json.loads((tmp_path / "runs/unit-e1-n512/ce/seed0.json").read_text())
    assert len(record["curve"]) == 1 and record["curve"][0] == record["decoy_test_accuracy"]
    for key in ("decoy_test_accuracy", "tied_test_accuracy", "clean_test_accuracy"):
        assert 0.0 <= record[key] <= 1.0
    assert record["identity"]["n_train"] == 512 and record["identity"]["high"] == 1.0
    step = json.loads((tmp_path / "step.json").read_text())
    assert set(step["seconds"]) == {"vanilla", "ce"}  # oracle costs vanilla's; ghost absent
    assert step["seconds"]["ce"] > 0

    def no_training(*a: object, **k: object) -> None:
        raise AssertionError("a finished run was recomputed")

    monkeypatch.setattr(xil, "run_one", no_training)
    assert xil.main([*args, "--report"]) == 0
    assert "| ce | 87.7 ± 0.8 |" in capsys.readouterr().out
    assert xil.main(args) == 0  # everything stored: nothing is trained again


def test_select_scores_on_validation_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(xil.SELECT_GRID, "center", (1.0, 10.0))
    assert xil.main([*SMALL, "--select", "--arms=center,vanilla", "--out", str(tmp_path)]) == 0
    chosen = json.loads((tmp_path / "select/selected.json").read_text())
    assert set(chosen) == {"center"} and chosen["center"] in (1.0, 10.0)
    records = [json.loads(p.read_text()) for p in (tmp_path / "select").rglob("w*.json")]
    assert len(records) == 2
    for record in records:
        assert "decoy_val_accuracy" in record
        assert not any(k.endswith("_test_accuracy") for k in record)  # the test set stays unseen
    weights = tmp_path / "select/selected.json"
    args = [*SMALL, "--arms=center", "--weights", str(weights), "--out", str(tmp_path / "t")]
    assert xil.main(args) == 0
    run = json.loads((tmp_path / "t/runs/unit-e1-n512/center/seed0.json").read_text())
    assert run["weight"] == chosen["center"]


def test_published_protocol_and_unknown_arms() -> None:
    args = xil.published(xil.common.parse(xil._parser(), ["--published", "--seeds=2"]))
    assert (args.scale, args.epochs, args.seeds) == (255.0, 64, 5)
    args = xil.published(xil.common.parse(xil._parser(), []))
    assert (args.scale, args.epochs, args.seeds) == (1.0, xil.EPOCHS, 3)
    assert xil.LR == 1e-3 and xil.BATCH == 256
    with pytest.raises(SystemExit):
        xil.main(["--arms", "vanilla,nonsense"])


def test_every_available_arm_takes_a_finite_step() -> None:
    # each arm's objective on a tiny Decoy-FMNIST batch: a finite loss and a gradient
    from xai_feedback.models import SimpleConvNet
    from xai_feedback.training import Batch

    data = xil.load_data(1.0, 8, 8, False)["train"]
    assert data.masks is not None
    batch = Batch(data.images, data.labels, data.masks, 0, 0, 1)
    for name, arm in xil.ARMS.items():
        objective = arm.build(xil.SELECTED.get(name, 1.0), 0, 1.0, torch.device("cpu"))
        assert objective is not None, name
        model = SimpleConvNet(generator=torch.Generator().manual_seed(0))
        loss, logits = objective(model, batch)
        assert logits.shape == (8, 10) and bool(torch.isfinite(loss)), name
        loss.backward()
        assert model.fc2.weight.grad is not None, name
