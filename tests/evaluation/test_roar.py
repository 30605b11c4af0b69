"""ROAR / KAR sweeps: results, resumption after a kill, failures, executors."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from xai_feedback import RangeError, ShapeError
from xai_feedback.data import load_digits
from xai_feedback.evaluation import KAR, ROAR, Curves, RetrainSweep
from xai_feedback.functional.masking import rank_mask, remove_pixels

from .sweep_helpers import MeanClassifier, train_crash_on_half, train_means, train_nothing

FRACTIONS = (0.25, 0.5, 0.75)


@pytest.fixture(scope="module")
def digits() -> tuple:
    train, test = load_digits("train"), load_digits("test")
    return train.subset(torch.arange(300)), test.subset(torch.arange(120))


def _intensity(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return images


def test_sweep_values_equal_a_direct_run(digits: tuple) -> None:
    train, test = digits
    sweep = RetrainSweep(
        train_means,
        {"intensity": _intensity},
        fractions=FRACTIONS,
        repeats=2,
        progress=False,
        fill="dataset_mean",  # Hooker et al.'s fill, computed by hand below
        squared=False,
    )
    curves = sweep.run(train, test)
    assert set(curves) == {"roar", "kar"}
    mean = train.images.mean(dim=(0, 2, 3))
    for mode, most in (("roar", True), ("kar", False)):
        for f in FRACTIONS:
            tr = remove_pixels(
                train.images, rank_mask(train.images, f, most_relevant=most), dataset_mean=mean
            )
            te = remove_pixels(
                test.images, rank_mask(test.images, f, most_relevant=most), dataset_mean=mean
            )
            model = train_means(type(train)(tr, train.labels), torch.Generator())
            expected = float((model(te).argmax(1) == test.labels).float().mean())
            assert curves[mode].runs("intensity", f) == [pytest.approx(expected)] * 2
    # random baseline present, one value per repeat, different rankings per repeat
    assert len(curves["roar"].runs("random", 0.5)) == 2
    # removing the bright (digit) pixels hurts more than removing the dark ones
    assert curves["roar"].auc("intensity") < curves["kar"].auc("intensity")
    assert "| ROAR: test accuracy |" in curves["roar"].table()


def test_resume_skips_finished_runs_and_caches_attributions(
    digits: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, test = digits
    log = tmp_path / "log.txt"
    monkeypatch.setenv("SWEEP_LOG", str(log))
    explained: list[int] = []

    def explain(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        explained.append(len(images))
        return images

    kw = {"fractions": FRACTIONS, "repeats": 2, "store": tmp_path / "runs", "progress": False}
    first = ROAR(train_means, {"intensity": explain}, **kw).run(train, test)
    assert len(log.read_text().splitlines()) == 2 * 3 * 2 and explained == [300, 120]
    # delete two records: a restart redoes exactly those and reads the rest
    records = sorted((tmp_path / "runs" / "roar").rglob("*.json"))
    assert len(records) == 12
    records[0].unlink()
    records[5].unlink()
    second = ROAR(train_means, {"intensity": explain}, **kw).run(train, test)
    assert len(log.read_text().splitlines()) == 12 + 2
    assert explained == [300, 120]  # attributions came from the store
    assert second["roar"].to_dict() == first["roar"].to_dict()
    record = json.loads(records[1].read_text())
    assert record["status"] == "ok" and {"mode", "method", "fraction", "repeat", "value"} <= set(
        record
    )


@pytest.mark.slow  # kills and restarts processes (~10-30 s); .ci/run runs it
def test_killed_sweep_resumes_without_redoing_finished_runs(tmp_path: Path) -> None:
    script = tmp_path / "sweep.py"
    script.write_text(
        "import sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parents[2])!r})\n"
        "from tests.evaluation.sweep_helpers import train_means\n"
        "from xai_feedback.data import load_digits\n"
        "from xai_feedback.evaluation import KAR\n"
        "train = load_digits('train').subset(torch.arange(200))\n"
        "test = load_digits('test').subset(torch.arange(50))\n"
        f"KAR(train_means, {{'intensity': lambda x, y: x}}, fractions={FRACTIONS}, repeats=3,\n"
        f"    store={str(tmp_path / 'runs')!r}, progress=False).run(train, test)\n"
    )
    env = {**os.environ, "SWEEP_DELAY": "0.4", "SWEEP_LOG": str(tmp_path / "log.txt")}
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    store = tmp_path / "runs" / "kar"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(store.rglob("*.json"))) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p: p.read_text() for p in store.rglob("*.json")}
    total = 2 * 3 * 3
    assert 4 <= len(done) < total
    assert not list(store.rglob("*.tmp"))  # no half-written record
    log = tmp_path / "log2.txt"
    env.update(SWEEP_DELAY="0", SWEEP_LOG=str(log))
    subprocess.run([sys.executable, str(script)], env=env, check=True)
    assert len(log.read_text().splitlines()) == total - len(done)
    assert all(p.read_text() == text for p, text in done.items())  # finished runs untouched
    assert len(list(store.rglob("*.json"))) == total


def test_failures_are_recorded_and_the_sweep_continues(digits: tuple, tmp_path: Path) -> None:
    train, test = digits
    with pytest.warns(RuntimeWarning, match="failed"):
        curves = KAR(
            train_crash_on_half,
            {"intensity": _intensity},
            fractions=FRACTIONS,
            repeats=1,
            store=tmp_path,
            progress=False,
        ).run(train, test)
    assert curves["kar"].failures["intensity"]["0.5"] == ["RuntimeError: simulated crash"]
    assert len(curves["kar"].runs("intensity", 0.25)) == 1
    record = json.loads(next(tmp_path.rglob("f0.5_r0.json")).read_text())
    assert record["status"] == "failed" and "simulated crash" in record["traceback"]
    with pytest.warns(RuntimeWarning):
        curves = ROAR(train_nothing, {}, fractions=[0.5], repeats=1, progress=False).run(
            train, test
        )
    assert (
        "`train_fn` must return the trained nn.Module, got NoneType"
        in curves["roar"].failures["random"]["0.5"][0]
    )


def test_bad_arguments(digits: tuple) -> None:
    train, test = digits
    with pytest.raises(RangeError, match="fractions"):
        ROAR(train_means, {}, fractions=[0.0, 0.5])
    with pytest.raises(RangeError, match="fractions"):
        ROAR(train_means, {}, fractions=[1.2])
    with pytest.raises(RangeError, match="random"):
        ROAR(train_means, {"random": _intensity})
    with pytest.raises(RangeError, match="modes"):
        RetrainSweep(train_means, {}, modes=("roar", "deletion"))
    bad = {"short": (train.images[:, :, :10], test.images)}
    with pytest.raises(ShapeError, match="methods\\['short'\\] train attributions"):
        ROAR(train_means, bad, fractions=[0.5], repeats=1, progress=False).run(train, test)


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_executors_give_the_same_curves(digits: tuple, kind: str) -> None:
    train, test = digits
    kw = {"fractions": (0.5,), "repeats": 2, "progress": False}
    serial = ROAR(train_means, {"intensity": (train.images, test.images)}, **kw).run(train, test)
    # "spawn": forking a process whose torch already runs OpenMP threads can deadlock
    spawn = multiprocessing.get_context("spawn")
    pool = ThreadPoolExecutor(2) if kind == "thread" else ProcessPoolExecutor(2, mp_context=spawn)
    with pool:
        parallel = ROAR(
            train_means, {"intensity": (train.images, test.images)}, executor=pool, **kw
        ).run(train, test)
    assert parallel["roar"].to_dict() == serial["roar"].to_dict()
    assert isinstance(Curves.from_dict(parallel["roar"].to_dict()), Curves)
    assert MeanClassifier  # the helper module imports in workers too


def test_store_refuses_runs_made_with_other_settings(digits: tuple, tmp_path: Path) -> None:
    train, test = digits
    kw = {"fractions": (0.5,), "repeats": 1, "progress": False, "store": tmp_path}
    ROAR(train_means, {}, **kw).run(train, test)
    with pytest.raises(RangeError, match="squared"):
        ROAR(train_means, {}, squared=False, **kw).run(train, test)
    with pytest.raises(RangeError, match="another `store`"):
        ROAR(train_means, {}, fill="zero", **kw).run(train, test)


def test_defaults_rank_by_magnitude_and_impute(digits: tuple) -> None:
    """Defaults: ROAD's noisy linear imputation, pixels ranked by |attribution|.

    An explainer whose evidence is negative on the ink (``-images``) ranks the ink *last* by
    signed value: signed ROAR at 50 % removes background and keeps the digit, while the
    default (magnitude) removes the ink first.
    """
    train, test = digits
    for make in (ROAR, KAR, RetrainSweep):
        sweep = make(train_means, {})
        assert (sweep.fill, sweep.squared) == ("noisy_linear", True)

    def negative(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -images

    kw = {"fractions": (0.5,), "repeats": 1, "progress": False}
    default = ROAR(train_means, {"neg": negative}, **kw).run(train, test)["roar"]
    signed = ROAR(train_means, {"neg": negative}, squared=False, **kw).run(train, test)["roar"]
    assert default.mean("neg")[0] < signed.mean("neg")[0] - 0.2
