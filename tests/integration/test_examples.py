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


def test_vit_example_runs_and_reports_the_token_layers() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "12_vit.py")],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    assert "vit_tiny: layer 'blocks.11.norm1', TokenReshape(prefix_tokens=1" in out
    assert "maps (4, 10, 4, 4)" in out
    assert "deit_tiny_distilled_patch16_224: 2 prefix tokens dropped" in out
    assert "vit_tiny_patch16_224: 5 prefix tokens dropped" in out
    assert "swin_tiny: layer 'norm', CAM maps (4, 2, 2)" in out
    assert "torchvision vit_b_16: layer 'encoder.layers.encoder_layer_11.ln_1'" in out
