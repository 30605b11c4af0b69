"""The result store (issue 14): fingerprints, safe names, locking, corruption, faults.

Every fault test ends with the curves of an undisturbed run and nothing finished lost.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from filelock import FileLock

import xai_feedback._io as io
from xai_feedback.data import ImageDataset
from xai_feedback.evaluation import KAR, ROAR, Curves, RetrainSweep, RunStore, StoreError
from xai_feedback.evaluation.fingerprint import Fingerprint
from xai_feedback.evaluation.store import escape_name

from .sweep_helpers import (
    darkness,
    intensity,
    small_digits,
    train_crash_if_env,
    train_kill_worker_once,
    train_means,
    train_means_again,
    train_needs_masks,
)
from .sweep_script import sweep_kwargs

ROOT = Path(__file__).parents[2]
KW: dict[str, Any] = sweep_kwargs()
TOTAL = 2 * 2 * 2  # methods (random, intensity) x fractions x repeats


@pytest.fixture(scope="module")
def data() -> tuple[ImageDataset, ImageDataset]:
    return small_digits()


@pytest.fixture(scope="module")
def reference(data: tuple[ImageDataset, ImageDataset]) -> dict[str, Any]:
    """The undisturbed run, without a store."""
    curves = KAR(train_means, {"intensity": intensity}, **KW).run(*data)
    return {m: c.to_dict() for m, c in curves.items()}


def _dicts(curves: dict[str, Curves]) -> dict[str, Any]:
    return {m: c.to_dict() for m, c in curves.items()}


def _records(store: Path) -> list[Path]:
    return sorted((store / "kar").rglob("*.json"))


def _trainings(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


# -- 1. content-addressed records -------------------------------------------------------------
def test_records_made_from_other_inputs_are_never_reused(
    data: tuple[ImageDataset, ImageDataset], tmp_path: Path
) -> None:
    train, test = data
    store = tmp_path / "s"
    KAR(train_means, {"intensity": intensity}, store=store, **KW).run(train, test)
    other_train = small_digits()[0].subset(torch.arange(100, 200))
    changes: list[tuple[str, Any, dict[str, Any], ImageDataset]] = [
        ("data", train_means, {"intensity": intensity}, other_train),
        ("method", train_means, {"intensity": darkness}, train),
        ("train_fn", train_means_again, {"intensity": intensity}, train),
    ]
    for what, train_fn, methods, train_data in changes:
        with pytest.raises(StoreError, match=f"differs in: .*{what}"):
            KAR(train_fn, methods, store=store, **KW).run(train_data, test)
    with pytest.raises(StoreError, match="train_config"):
        KAR(train_means, {"intensity": intensity}, store=store, train_config={"v": 2}, **KW).run(
            train, test
        )
    with pytest.raises(StoreError, match="method"):
        cfg = {"intensity": {"layer": "conv2"}}
        KAR(train_means, {"intensity": intensity}, store=store, method_config=cfg, **KW).run(
            train, test
        )
    with pytest.raises(StoreError, match="data"):
        KAR(train_means, {"intensity": intensity}, store=store, dataset_id="digits", **KW).run(
            train, test
        )
    # recompute: the numbers of the new inputs, identical to a run without a store
    fresh = KAR(train_means, {"intensity": darkness}, **KW).run(train, test)
    redone = KAR(
        train_means,
        {"intensity": darkness},
        store=RunStore(store, on_mismatch="recompute"),
        **KW,
    ).run(train, test)
    assert _dicts(redone) == _dicts(fresh)
    assert _dicts(redone) != _dicts(KAR(train_means, {"intensity": intensity}, **KW).run(*data))
    assert len(list((store / "_stale").rglob("*.json.*"))) == TOTAL // 2  # intensity's records
    record = json.loads(_records(store)[0].read_text())
    assert len(record["fingerprint"]) == 64 and record["identity"]["fill"] == "noisy_linear"


def test_fingerprint_sees_data_explainer_and_config() -> None:
    x = torch.rand(4, 1, 3, 3)
    base = {"data": x, "fn": intensity, "config": {"epochs": 1}}
    same = {"data": x.clone(), "fn": intensity, "config": {"epochs": 1}}
    assert Fingerprint.of(_ident(base)).digest == Fingerprint.of(_ident(same)).digest
    for key, value in (("data", x + 1e-6), ("fn", darkness), ("config", {"epochs": 2})):
        other = {**base, key: value}
        assert Fingerprint.of(_ident(other)).digest != Fingerprint.of(_ident(base)).digest
    # a lambda closing over another model is another explainer
    m1, m2 = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    f1 = lambda x, y: m1(x)  # noqa: E731
    f2 = lambda x, y: m2(x)  # noqa: E731
    assert _ident({"f": f1}) != _ident({"f": f2})


def _ident(obj: Any) -> Any:
    from xai_feedback.evaluation.fingerprint import identity

    return identity(obj)


# -- 2. safe names ----------------------------------------------------------------------------
NAMES = ["a b", "a_b", "..", ".", "../x", "/etc/passwd", "a/b", "a%2Fb", "C:\\x", "é", ".hidden"]


def test_names_map_injectively_to_files_inside_the_store(tmp_path: Path) -> None:
    escaped = [escape_name(n) for n in NAMES]
    assert len(set(escaped)) == len(NAMES)
    for name, e in zip(NAMES, escaped, strict=True):
        assert "/" not in e and "\\" not in e and e not in (".", "..") and not e.startswith(".")
        assert urllib.parse.unquote(e) == name  # decodable, hence injective
    store = RunStore(tmp_path / "store")
    for i, name in enumerate(NAMES):
        store.put(["roar", name, name], {"status": "ok", "value": float(i)})
    outside = [p for p in tmp_path.rglob("*") if (tmp_path / "store") not in p.parents]
    assert outside == [tmp_path / "store"]
    for i, name in enumerate(NAMES):
        assert store.get(["roar", name, name]) == {"status": "ok", "value": float(i)}
    with pytest.raises(ValueError, match="empty"):
        store.path(["roar", ""])


def test_attribution_cache_keeps_names_apart(
    data: tuple[ImageDataset, ImageDataset], tmp_path: Path
) -> None:
    train, test = data
    methods = {
        "a b": (train.images, test.images),
        "a_b": (1 - train.images, 1 - test.images),
        "../../escape": (train.images, test.images),
    }
    kw = {**KW, "fractions": (0.5,), "repeats": 1}
    curves = ROAR(train_means, methods, store=tmp_path / "s", **kw).run(train, test)
    assert {p.parent for p in tmp_path.rglob("*.pt")} == {
        tmp_path / "s" / "attributions" / escape_name(n) for n in methods
    }
    assert curves["roar"].runs("a b", 0.5) != curves["roar"].runs("a_b", 0.5)
    again = ROAR(train_means, methods, store=tmp_path / "s", **kw).run(train, test)
    assert _dicts(again) == _dicts(curves)


# -- 3. locking -------------------------------------------------------------------------------
def test_a_held_lock_gives_a_clear_error(tmp_path: Path) -> None:
    store = RunStore(tmp_path, lock_timeout=0.2)
    with FileLock(str(tmp_path / ".lock")), pytest.raises(StoreError, match="could not lock"):
        store.put(["roar", "m", "r"], {"status": "ok", "value": 1.0})
    store.put(["roar", "m", "r"], {"status": "ok", "value": 1.0})  # free again


def _script(store: Path, out: Path, *extra: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tests.evaluation.sweep_script", str(store), str(out), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env)


def _env(tmp_path: Path, log: str, delay: str = "0") -> dict[str, str]:
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    return {
        **os.environ,
        "PYTHONPATH": path,
        "OMP_NUM_THREADS": "1",
        "SWEEP_LOG": str(tmp_path / log),
        "SWEEP_DELAY": delay,
    }


def test_two_sweeps_at_once_share_the_store(
    data: tuple[ImageDataset, ImageDataset], tmp_path: Path, reference: dict[str, Any]
) -> None:
    store = tmp_path / "s"
    procs = [
        _script(store, tmp_path / f"out{i}.json", env=_env(tmp_path, f"log{i}", "0.1"))
        for i in range(2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    for i in range(2):
        assert json.loads((tmp_path / f"out{i}.json").read_text()) == reference
    assert len(_records(store)) == TOTAL
    assert all(json.loads(p.read_text())["status"] == "ok" for p in _records(store))
    assert not list(store.rglob("*.tmp"))
    # and a third, with other settings, is refused with a clear error
    with pytest.raises(ValueError, match="another `store`"):
        KAR(train_means, {"intensity": intensity}, store=store, fill="zero", **KW).run(*data)


# -- 4. corruption and failed runs ------------------------------------------------------------
def test_corrupt_record_is_set_aside_and_recomputed(
    data: tuple[ImageDataset, ImageDataset], tmp_path: Path, reference: dict[str, Any]
) -> None:
    store = tmp_path / "s"
    KAR(train_means, {"intensity": intensity}, store=store, **KW).run(*data)
    bad = _records(store)[3]
    bad.write_text('{"status": "ok", "val')  # a torn / damaged file
    strict = RunStore(store, on_corrupt="raise")
    with pytest.raises(StoreError, match=re.escape(str(bad))):
        KAR(train_means, {"intensity": intensity}, store=strict, **KW).run(*data)
    with pytest.warns(RuntimeWarning, match=re.escape(str(bad))):
        curves = KAR(train_means, {"intensity": intensity}, store=store, **KW).run(*data)
    assert _dicts(curves) == reference
    kept = list((store / "_corrupt").rglob("*"))
    assert [p.read_text() for p in kept if p.is_file()] == ['{"status": "ok", "val']
    assert json.loads(bad.read_text())["status"] == "ok"


def test_failed_runs_show_in_the_table_and_are_retried(
    data: tuple[ImageDataset, ImageDataset],
    tmp_path: Path,
    reference: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SWEEP_CRASH", "1")
    sweep = KAR(train_crash_if_env, {"intensity": intensity}, store=tmp_path, **KW)
    with pytest.warns(RuntimeWarning, match="4 run"):
        curves = sweep.run(*data)
    table = curves["kar"].table()
    assert table.count("failed (2)") == 2  # random and intensity at 0.5, two repeats each
    record = json.loads(next(tmp_path.rglob("f0.5_r1.json")).read_text())
    assert "transient crash" in record["traceback"] and "Traceback" in record["traceback"]
    monkeypatch.delenv("SWEEP_CRASH")
    resumed = KAR(train_crash_if_env, {"intensity": intensity}, store=tmp_path, **KW).run(*data)
    assert _dicts(resumed) == reference


def test_all_runs_failed_is_not_an_empty_table(data: tuple[ImageDataset, ImageDataset]) -> None:
    from .sweep_helpers import train_nothing

    with pytest.warns(RuntimeWarning, match="all 2 run"):
        curves = ROAR(train_nothing, {"i": intensity}, fractions=[0.5], repeats=1, progress=False)
        out = curves.run(*data)
    rows = out["roar"].table().splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == ["| random", "| i"]
    assert all("failed (1)" in r for r in rows)


def test_train_fn_receives_the_masks(data: tuple[ImageDataset, ImageDataset]) -> None:
    train, test = data
    masks = torch.zeros(len(train), 28, 28, dtype=torch.bool)
    masked = ImageDataset(train.images, train.labels, masks, train.name)
    curves = ROAR(train_needs_masks, {}, fractions=[0.5], repeats=1, progress=False).run(
        masked, test
    )
    assert curves["roar"].failures == {} and len(curves["roar"].runs("random", 0.5)) == 1


# -- 5. safe loading --------------------------------------------------------------------------
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_cached_attributions_load_weights_only(
    data: tuple[ImageDataset, ImageDataset], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = RunStore(tmp_path / "s")
    path = store.path(("attributions", "intensity", "train"), ".pt")
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(_Payload()))  # a malicious "cache" file
    calls: list[dict[str, Any]] = []
    real = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        ROAR(
            train_means,
            {"intensity": intensity},
            store=store.root,
            fractions=[0.5],
            repeats=1,
            progress=False,
        ).run(*data)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()
    assert calls and all(c.get("weights_only") is True for c in calls)
    assert len(list((tmp_path / "s" / "_corrupt").rglob("*"))) >= 1


# -- 8. faults --------------------------------------------------------------------------------
@pytest.mark.slow  # kills and restarts processes (~10-30 s); .ci/run runs it
def test_killed_worker_is_recorded_and_retried(
    data: tuple[ImageDataset, ImageDataset],
    tmp_path: Path,
    reference: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SWEEP_KILL_MARKER", str(tmp_path / "killed"))
    spawn = multiprocessing.get_context("spawn")
    kw = {**KW, "store": tmp_path / "s", "max_pending": 2}
    with ProcessPoolExecutor(2, mp_context=spawn) as pool, pytest.warns(RuntimeWarning):
        broken = KAR(train_kill_worker_once, {"intensity": intensity}, executor=pool, **kw)
        curves = broken.run(*data)
    assert (tmp_path / "killed").exists()
    errors = [e for by_f in curves["kar"].failures.values() for es in by_f.values() for e in es]
    assert errors and all("BrokenProcessPool" in e for e in errors)
    with ProcessPoolExecutor(2, mp_context=spawn) as pool:
        resumed = KAR(train_kill_worker_once, {"intensity": intensity}, executor=pool, **kw)
        assert _dicts(resumed.run(*data)) == reference


@pytest.mark.slow  # kills and restarts processes (~10-30 s); .ci/run runs it
def test_parent_killed_mid_write_loses_nothing(tmp_path: Path, reference: dict[str, Any]) -> None:
    store = tmp_path / "s"
    hanging = tmp_path / "hanging"
    env = {**_env(tmp_path, "log1"), "SWEEP_HANGING": str(hanging)}
    proc = _script(store, tmp_path / "out.json", "3", env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not hanging.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list(store.rglob("f*.tmp"))) == 1  # killed in the middle of a write
    done = {p: p.read_text() for p in _records(store)}
    assert len(done) == 2
    resumed = _script(store, tmp_path / "out.json", env=_env(tmp_path, "log2"))
    assert resumed.wait(timeout=300) == 0
    assert json.loads((tmp_path / "out.json").read_text()) == reference
    assert _trainings(tmp_path / "log2") == TOTAL - 2
    assert all(p.read_text() == text for p, text in done.items())
    assert not list(store.rglob("*.tmp"))


def test_full_disk_raises_naming_the_file_and_resumes(
    data: tuple[ImageDataset, ImageDataset],
    tmp_path: Path,
    reference: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = tmp_path / "s"
    real = os.replace
    count = 0

    def replace(src: Any, dst: Any) -> None:
        nonlocal count
        if Path(dst).name.startswith("f"):
            count += 1
            if count == 4:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(StoreError, match=r"No space left.*resume") as caught:
        KAR(train_means, {"intensity": intensity}, store=store, **KW).run(*data)
    assert "f0." in str(caught.value)  # names the record it could not write
    monkeypatch.setattr(io.os, "replace", real)
    assert len(_records(store)) == 3 and not list(store.rglob("*.tmp"))
    log = tmp_path / "log"
    monkeypatch.setenv("SWEEP_LOG", str(log))
    curves = KAR(train_means, {"intensity": intensity}, store=store, **KW).run(*data)
    assert _dicts(curves) == reference
    assert _trainings(log) == TOTAL - 3


def test_legacy_record_without_fingerprint_is_not_reused(
    data: tuple[ImageDataset, ImageDataset], tmp_path: Path
) -> None:
    store = tmp_path / "s"
    legacy = {"status": "ok", "value": 0.123, "mode": "kar"}
    RunStore(store).put(["kar", "random", "f0.25_r0"], legacy)
    with pytest.raises(StoreError, match="older version"):
        RetrainSweep(train_means, {}, modes=("kar",), store=store, **KW).run(*data)
