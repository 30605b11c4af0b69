"""The confound benchmarks: their ResNet, their arms, and resumable smoke runs of each."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from xai_feedback.cli import find_benchmarks, list_benchmarks, load_benchmark
from xai_feedback.hooks import CAMHook

FOLDER = find_benchmarks(Path(__file__).parent)
confounds = load_benchmark("confounds", FOLDER)
select = load_benchmark("confounds_select", FOLDER)
levels = load_benchmark("confounds_levels", FOLDER)
mlp = load_benchmark("confounds_mlp", FOLDER)
arms = importlib.import_module("_arms")  # the shared modules load_benchmark made importable
common = importlib.import_module("_common")


def test_every_experiment_is_a_benchmark_and_the_shared_module_is_not() -> None:
    assert FOLDER is not None
    found = list_benchmarks(FOLDER)
    assert {"confounds", "confounds_select", "confounds_levels", "confounds_mlp"} <= set(found)
    assert not [name for name in found if name.startswith("_")]


def test_battery_resnet_shapes_and_exact_cam() -> None:
    model = arms.ARCHS["resnet"](4, torch.Generator().manual_seed(0)).eval()
    x = torch.rand(3, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (3, 10)
    with CAMHook(model) as hook, torch.no_grad():
        out = model(x)
        maps = hook.maps(out, all_classes=True)
    assert maps.shape == (3, 10, 14, 14)
    # GAP + linear head: the logit is the CAM's spatial mean plus the bias
    assert torch.allclose(maps.mean((2, 3)) + model.fc.bias, out, atol=1e-5)
    # torchvision's BasicBlock: a 1x1 projection shortcut where the shape changes
    assert model.layer2[0].downsample is not None and model.layer1[0].downsample is None


def test_annotation_arms_are_skipped_without_a_shortcut() -> None:
    assert arms.applies(arms.ARMS["center"], "none")
    assert not arms.applies(arms.ARMS["mask"], "uncentered")
    assert all(arms.applies(a, "frame") for a in arms.ARMS.values())


def test_arm_specs_build_objectives() -> None:
    from xai_feedback.data import confounded_digits

    train = confounded_digits("train", "background")
    for spec in select.SELECT_GRID:
        assert callable(arms.objective_from_spec(spec, 0, train))
    for arm in arms.ARMS.values():
        assert callable(arm.make(0, train))
    # the data-range fill of the faint background level stays within its levels 0 ... 0.45
    low, high = arms.training_range(train)
    assert low == 0.0 and high == pytest.approx(0.45)
    with pytest.raises(ValueError, match="training data"):
        arms.objective_from_spec("cf:range=data", 0)
    with pytest.raises(ValueError, match="unknown arm spec"):
        arms.objective_from_spec("dropout:p=0.5", 0)


def _json_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.json"))


def test_battery_resumes_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--quick", "--out", str(tmp_path), "--threads", "1", "--families", "frame"]
    assert confounds.main(argv) == 0
    assert _json_files(tmp_path) == [
        "runs/gapnet/frame/counterexamples/seed0.json",
        "runs/gapnet/frame/vanilla/seed0.json",
    ]
    record = json.loads((tmp_path / "runs/gapnet/frame/vanilla/seed0.json").read_text())
    assert "status" not in record and "value" not in record  # the benchmark's own record
    assert record["identity"] == {
        "arch": "gapnet",
        "family": "frame",
        "arm": "vanilla",
        "seed": 0,
        "epochs": 1,
        "width": 4,
    }
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.json")}
    calls: list[object] = []
    monkeypatch.setattr(confounds, "run_one", lambda *a, **k: calls.append(a))
    assert confounds.main(argv) == 0  # resumes: nothing retrained
    assert calls == []
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.json")} == stamps
    assert "| frame |" in capsys.readouterr().out
    assert confounds.main([*argv, "--report-only"]) == 0
    assert "| frame |" in capsys.readouterr().out


def test_battery_reruns_a_run_made_with_other_settings(tmp_path: Path) -> None:
    argv = ["--quick", "--out", str(tmp_path), "--threads", "1", "--families", "none"]
    argv += ["--arms", "vanilla"]
    assert confounds.main(argv) == 0
    assert confounds.main([*argv, "--report-only", "--epochs", "2"]) == 0  # moves nothing
    assert _json_files(tmp_path) == ["runs/gapnet/none/vanilla/seed0.json"]
    assert confounds.main([*argv, "--epochs", "2"]) == 0
    stale = [p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("seed0.json.*")]
    assert stale == ["runs/_stale/gapnet/none/vanilla"]
    record = json.loads((tmp_path / "runs/gapnet/none/vanilla/seed0.json").read_text())
    assert record["epochs"] == 2


def test_select_resumes_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--quick", "--out", str(tmp_path), "--threads", "1", "--grid", "mask:d=4;lam=10"]
    assert select.main(argv) == 0
    assert _json_files(tmp_path) == ["select/gapnet/frame/mask_d=4_lam=10/seed0.json"]
    assert "| mask:d=4;lam=10 |" in capsys.readouterr().out
    monkeypatch.setattr(select, "run_one", lambda *a, **k: pytest.fail("retrained"))
    assert select.main(argv) == 0
    assert "| mask:d=4;lam=10 |" in capsys.readouterr().out


def test_levels_resumes_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--quick", "--out", str(tmp_path), "--threads", "1"]
    assert levels.main(argv) == 0
    assert _json_files(tmp_path) == ["levels/vanilla/seed0.json"]
    assert "| vanilla |" in capsys.readouterr().out
    monkeypatch.setattr(levels, "train_model", lambda *a, **k: pytest.fail("retrained"))
    assert levels.main(argv) == 0
    assert "| vanilla |" in capsys.readouterr().out


def test_mlp_resumes_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--quick", "--out", str(tmp_path), "--threads", "1"]
    assert mlp.main(argv) == 0
    assert _json_files(tmp_path) == [
        f"mlp/{arm}_l1/seed0.json" for arm in ("counterexamples", "oracle", "rrr", "vanilla")
    ]
    assert (tmp_path / "mlp_table.md").exists()
    assert "| rrr (lambda 1) |" in capsys.readouterr().out
    monkeypatch.setattr(mlp, "fit", lambda *a, **k: pytest.fail("retrained"))
    assert mlp.main(argv) == 0
    assert "| oracle |" in capsys.readouterr().out


def test_resume_run_keeps_the_settings_and_runs_once(tmp_path: Path) -> None:
    store = common.settings_store(tmp_path)
    calls: list[int] = []

    def run() -> dict[str, object]:
        calls.append(1)
        return {"accuracy": 0.5}

    first = common.resume_run(store, ["a", "seed0"], {"epochs": 1}, run)
    again = common.resume_run(store, ["a", "seed0"], {"epochs": 1}, run)
    assert calls == [1] and first == again and again["identity"] == {"epochs": 1}
    assert common.stored_run(store, ["a", "seed0"], {"epochs": 2}) is None
    assert common.resume_run(store, ["a", "seed0"], {"epochs": 1}, run, fresh=True)
    assert calls == [1, 1]


class _FrameReader(torch.nn.Module):
    """Reads the class off the frame's gray alone: level v = (255 - 255 g) / 25."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gray = x[:, 0, 0, :].mean(1)  # the top row is frame
        level = ((255 - 255 * gray) / 25).round().clamp(0, 9).long()
        return torch.nn.functional.one_hot(level, 10).float()


def test_level_probe_on_a_pure_frame_reader() -> None:
    from xai_feedback.data import confounded_digits

    clean = confounded_digits("test", "frame", rule="none")
    probe = levels.level_probe(_FrameReader(), clean)
    shares = torch.bincount(clean.labels, minlength=10).float() / len(clean.labels)
    # at gray v every image is called v: accuracy = the share of class v
    assert probe["level_accuracy"] == pytest.approx(shares.tolist(), abs=1e-6)
    # frameless (gray 0, darker than class 9's 0.12): all called 9
    assert probe["clean_predicted_as_9"] == 1.0
    assert probe["clean_accuracy"] == pytest.approx(float(shares[9]), abs=1e-6)
