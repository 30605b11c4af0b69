import importlib
import json
from pathlib import Path

import pytest
import torch

from xai_feedback._io import read_json, write_json_atomic
from xai_feedback.cli import find_benchmarks, load_benchmark
from xai_feedback.data import confounded_digits
from xai_feedback.functional import resize_maps
from xai_feedback.models import GAPNet

decoy = load_benchmark("decoy", find_benchmarks(Path(__file__).parent))


def test_write_json_atomic_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.json"
    write_json_atomic(path, {"x": 1.5})
    assert read_json(path) == {"x": 1.5}
    assert read_json(tmp_path / "missing.json") is None
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]  # no temporary left behind


def test_confound_energy_share_matches_per_image_loop() -> None:
    model = GAPNet(width=4, generator=torch.Generator().manual_seed(0)).eval()
    data = confounded_digits("test", "frame").subset(torch.arange(5))
    assert data.masks is not None
    expected = []
    with torch.no_grad():
        for i in range(5):  # independent reference: one image at a time, explicit CAM
            x = data.images[i : i + 1]
            acts = model.features(x)
            cam = torch.einsum("kc,bchw->bkhw", model.classifier.weight, acts)
            cam = resize_maps(cam, (28, 28))[0]
            energy = cam.pow(2).sum(0)
            expected.append(float(energy[data.masks[i]].sum() / energy.sum()))
    share = decoy.confound_energy_share(model, data)
    assert share == pytest.approx(sum(expected) / 5, rel=1e-5)
    assert 0.0 <= share <= 1.0


def test_benchmark_writes_runs_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "--confounds",
        "swatch4",
        "--methods",
        "vanilla,cam",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--width",
        "4",
        "--out",
        str(tmp_path),
    ]
    assert decoy.main(args) == 0
    out = capsys.readouterr().out
    assert "| swatch4 | vanilla |" in out and "| swatch4 | cam |" in out
    runs = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json"))
    assert runs == [f"runs/swatch4/{m}/seed{s}.json" for m in ("cam", "vanilla") for s in (0, 1)]
    record = json.loads((tmp_path / "runs/swatch4/cam/seed1.json").read_text())
    assert 0.0 <= record["confound_test_accuracy"] <= 1.0 and record["epochs"] == 1
    assert "status" not in record and record["identity"]["width"] == 4  # keyed by its settings
    assert (tmp_path / "table.md").exists()

    def no_training(*a: object, **k: object) -> None:
        raise AssertionError("a finished run was recomputed")

    monkeypatch.setattr(decoy, "run_one", no_training)
    assert decoy.main(args) == 0  # everything cached: resumes without training
    assert "| swatch4 | cam |" in capsys.readouterr().out


def test_benchmark_rejects_unknown_names() -> None:
    with pytest.raises(SystemExit):
        decoy.main(["--confounds", "stripes"])
    with pytest.raises(SystemExit):
        decoy.main(["--methods", "magic"])


def test_select_resumes_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--select", "--confounds", "swatch4", "--sigmas", "0.7", "--lambdas", "10"]
    args += ["--epochs", "1", "--width", "4", "--out", str(tmp_path)]
    assert decoy.main(args) == 0
    assert "| 0.7 | 10 |" in capsys.readouterr().out
    runs = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json"))
    assert runs == ["select/swatch4/cam_s0.7_l10/seed0.json"]
    monkeypatch.setattr(decoy, "run_one", lambda *a, **k: pytest.fail("retrained"))
    assert decoy.main(args) == 0
    assert "| 0.7 | 10 |" in capsys.readouterr().out


def test_methods_reuse_the_shared_arms() -> None:
    arms = importlib.import_module("_arms")  # importable once a benchmark is loaded
    for name in ("vanilla", "rrr", "oracle"):
        assert decoy.METHODS[name] is arms.ARMS[name]
    assert decoy.METHODS["oracle"].oracle and not decoy.METHODS["cam"].oracle
