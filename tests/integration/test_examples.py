"""The runnable "bring your own model" example works on real torchvision and timm models."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_torchvision_example_runs_and_reports_the_pooled_layers() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "10_torchvision.py")],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    assert "resnet18: layer 'layer4'" in out
    assert "densenet121: layer 'features'" in out
    assert "DataParallel: same maps as the bare model: True" in out
    assert "timm efficientnet_b0: layer 'bn2'" in out
