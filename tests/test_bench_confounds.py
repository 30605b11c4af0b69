"""The confound battery benchmark: its ResNet, its arms, and a resumable smoke run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xai_feedback.cli import find_benchmarks, load_benchmark
from xai_feedback.hooks import CAMHook

confounds = load_benchmark("confounds", find_benchmarks(Path(__file__).parent))


def test_small_resnet_shapes_and_exact_cam() -> None:
    model = confounds.SmallResNet(width=4, generator=torch.Generator().manual_seed(0)).eval()
    x = torch.rand(3, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (3, 10)
    with CAMHook(model) as hook, torch.no_grad():
        out = model(x)
        maps = hook.cam(out, all_classes=True)
    assert maps.shape == (3, 10, 14, 14)
    # GAP + linear head: the logit is the CAM's spatial mean plus the bias
    assert torch.allclose(maps.mean((2, 3)) + model.fc.bias, out, atol=1e-5)
    # torchvision's BasicBlock: a 1x1 projection shortcut where the shape changes
    assert model.layer2[0].downsample is not None and model.layer1[0].downsample is None


def test_annotation_arms_are_skipped_without_a_shortcut() -> None:
    arms = confounds.ARMS
    assert confounds._applies(arms["center"], "none")
    assert not confounds._applies(arms["mask"], "uncentered")
    assert all(confounds._applies(a, "frame") for a in arms.values())


def test_arm_specs_build_objectives() -> None:
    from xai_feedback.data import make_confound

    train = make_confound("train", "background")
    for spec in confounds.SELECT_GRID:
        assert callable(confounds.objective_from_spec(spec, 0, train))
    for arm in confounds.ARMS.values():
        assert callable(arm.make(0, train))
    # the data-range fill of the faint background level stays within its levels 0 ... 0.45
    low, high = confounds._training_range(train)
    assert low == 0.0 and high == pytest.approx(0.45)
    with pytest.raises(ValueError, match="training data"):
        confounds.objective_from_spec("cf:range=data", 0)
    with pytest.raises(ValueError, match="unknown arm spec"):
        confounds.objective_from_spec("dropout:p=0.5", 0)


def test_smoke_run_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--quick", "--out", str(tmp_path), "--threads", "1", "--families", "frame"]
    assert confounds.main(argv) == 0
    runs = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("seed0.json"))
    assert runs == [
        "runs/gapnet/frame/counterexamples/seed0.json",
        "runs/gapnet/frame/vanilla/seed0.json",
    ]
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("seed0.json")}
    assert confounds.main(argv) == 0  # resumes: nothing retrained
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("seed0.json")} == stamps
    assert "| frame |" in capsys.readouterr().out


class _FrameReader(torch.nn.Module):
    """Reads the class off the frame's gray alone: level v = (255 - 255 g) / 25."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gray = x[:, 0, 0, :].mean(1)  # the top row is frame
        level = ((255 - 255 * gray) / 25).round().clamp(0, 9).long()
        return torch.nn.functional.one_hot(level, 10).float()


def test_level_probe_on_a_pure_frame_reader() -> None:
    from xai_feedback.data import make_confound

    clean = make_confound("test", "frame", rule="none")
    probe = confounds.level_probe(_FrameReader(), clean)
    shares = torch.bincount(clean.labels, minlength=10).float() / len(clean.labels)
    # at gray v every image is called v: accuracy = the share of class v
    assert probe["level_accuracy"] == pytest.approx(shares.tolist(), abs=1e-6)
    # frameless (gray 0, darker than class 9's 0.12): all called 9
    assert probe["clean_predicted_as_9"] == 1.0
    assert probe["clean_accuracy"] == pytest.approx(float(shares[9]), abs=1e-6)
