from pathlib import Path

import numpy as np
import pytest
import torch

from xai_feedback.attribution import attribute
from xai_feedback.cli import find_benchmarks, load_benchmark
from xai_feedback.data import load_digits
from xai_feedback.models import GAPNet
from xai_feedback.proxy import ProxyAttention

bench = load_benchmark("proxy", find_benchmarks(Path(__file__).parent))


def test_seed_style_pipeline_agrees_with_batched_one() -> None:
    model = GAPNet(width=4, generator=torch.Generator().manual_seed(0)).eval()
    data = load_digits("test")
    x, y = data.images[:16], data.labels[:16]
    ours = ProxyAttention(threshold=0.85)(
        x, attribute(model, x, y, method="grad_cam_pp", reduce="abs_sum")
    ).numpy()
    seed = bench.thesis_style_proxies(model, x, y, 0.85)
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.parameters())
    # the two pipelines differ only in resampling at the threshold's edge
    assert float(np.mean(ours == seed)) > 0.97


def test_accuracy_part_runs_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "--parts",
        "accuracy",
        "--datasets",
        "frame",
        "--schedule",
        "1,p,1",
        "--seeds",
        "1",
        "--width",
        "4",
        "--out",
        str(tmp_path),
    ]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "| frame | baseline |" in out and "| frame | proxy |" in out
    assert len(list(tmp_path.rglob("*.json"))) == 2

    def no_training(*a: object, **k: object) -> None:
        raise AssertionError("a finished run was recomputed")

    monkeypatch.setattr(bench, "train_with_proxy", no_training)
    assert bench.main(args) == 0


def test_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--datasets", "cifar"])
    with pytest.raises(Exception, match="end with epochs"):
        bench.main(["--schedule", "2,p"])


def test_regimes_part_runs_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--regimes", "--regime-list", "n100", "--regime-schedule", "1,p,1"]
    args += ["--seeds", "1", "--val-seeds", "1", "--width", "4", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "(chosen)" in out and "| n100 | copies (" in out
    assert len(list(tmp_path.rglob("*.json"))) == 5 + 3  # validation: 1 + 4 arms; test: 3

    def no_training(*a: object, **k: object) -> None:
        raise AssertionError("a finished run was recomputed")

    monkeypatch.setattr(bench, "train_with_proxy", no_training)
    assert bench.main(args) == 0


def test_harden_is_deterministic_and_in_range() -> None:
    data = load_digits("test")
    a, b = bench.harden(data, 1), bench.harden(data, 1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, data.labels)
    assert not torch.equal(a.images, bench.harden(data, 2).images)
    assert float(a.images.min()) >= 0.0 and float(a.images.max()) <= 1.0
