"""ROAR / KAR sweeps on a dask.distributed cluster through ``Client.get_executor()``.

A ``LocalCluster`` of 2 worker processes runs the sweep unchanged: the curves equal a serial
run's; a worker killed (SIGKILL) mid-run loses nothing (dask reruns its tasks, the sweep
records every run once); only the client process writes the store, so a rerun reads every
record back and trains nothing.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from xai_feedback.cli import main as cli_main
from xai_feedback.data import load_digits
from xai_feedback.evaluation import RetrainSweep

from .evaluation.sweep_helpers import train_means

distributed = pytest.importorskip("distributed", reason="needs dask[distributed]")

FRACTIONS = (0.25, 0.5, 0.75)
REPEATS = 2
RUNS = 2 * 2 * len(FRACTIONS) * REPEATS  # modes x (random + intensity) x fractions x repeats


def _intensity(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return images


def test_the_benchmark_runs_every_path_with_the_same_curves(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # first in the file: before the module's cluster starts (2 more workers on 2 cores)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    for name in ("OMP_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_"):  # restored afterwards
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    tiny = ["--train-size", "120", "--test-size", "40", "--fractions", "0.5", "--repeats", "1"]
    try:
        code = cli_main(["bench", "dask_sweep", *tiny, "--epochs", "1", "--naive-workers"])
    finally:
        torch.set_num_threads(threads)  # the script sets one thread in this process
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line for line in out.splitlines() if line.startswith(("| serial", "| dask", "| plain"))]
    assert len(rows) == 3 and all(row.endswith("| yes |") for row in rows), out
    assert "dask_executor(2): cluster start" in out and "at start-up: ['None']" in out
    assert "at start-up: ['65536']" in out  # the plain LocalCluster's workers


@pytest.fixture(scope="module")
def digits() -> tuple:
    train, test = load_digits("train"), load_digits("test")
    return train.subset(torch.arange(300)), test.subset(torch.arange(120))


@pytest.fixture(scope="module")
def serial(digits: tuple) -> dict:
    sweep = RetrainSweep(
        train_means, {"intensity": _intensity}, fractions=FRACTIONS, repeats=REPEATS, progress=False
    )
    return {mode: c.to_dict() for mode, c in sweep.run(*digits).items()}


@pytest.fixture(scope="module")
def client() -> object:
    # SWEEP_DELAY slows every training to 0.2 s, so a worker can be killed while runs are
    # in flight; the workers inherit it when they start.
    old = os.environ.get("SWEEP_DELAY")
    os.environ["SWEEP_DELAY"] = "0.2"
    try:
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
        )
    finally:
        if old is None:
            del os.environ["SWEEP_DELAY"]
        else:
            os.environ["SWEEP_DELAY"] = old
    with cluster, distributed.Client(cluster) as c:
        yield c


def _sweep(store: Path, client: object) -> RetrainSweep:
    return RetrainSweep(
        train_means,
        {"intensity": _intensity},
        fractions=FRACTIONS,
        repeats=REPEATS,
        store=store,
        executor=client.get_executor(),  # type: ignore[attr-defined]
        max_pending=4,
        progress=False,
    )


def test_dask_sweep_equals_the_serial_sweep(digits: tuple, serial: dict, client, tmp_path) -> None:
    curves = _sweep(tmp_path / "runs", client).run(*digits)
    assert {mode: c.to_dict() for mode, c in curves.items()} == serial
    records = sorted((tmp_path / "runs").rglob("f*_r*.json"))
    assert len(records) == RUNS


def test_a_worker_killed_mid_run_loses_nothing(
    digits: tuple, serial: dict, client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "runs"
    pids = client.run(os.getpid)  # {worker address: pid}
    assert len(pids) == 2
    victim = next(iter(pids.values()))
    killed_at: list[int] = []

    def kill_when_running() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = len(list(store.rglob("f*_r*.json"))) if store.exists() else 0
            if done >= 2:  # runs are flowing, most are still to come
                killed_at.append(done)
                os.kill(victim, signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_running)
    killer.start()
    curves = _sweep(store, client).run(*digits)
    killer.join()
    assert killed_at and killed_at[0] < RUNS // 2, "the worker was not killed mid-run"
    assert victim not in client.run(os.getpid).values()  # really dead (the nanny restarted it)
    assert {mode: c.to_dict() for mode, c in curves.items()} == serial  # no failures recorded

    # the store holds every run once; a rerun reads them all and trains nothing
    log = tmp_path / "log.txt"
    monkeypatch.setenv("SWEEP_LOG", str(log))  # in-process: the rerun must not train
    rerun = RetrainSweep(
        train_means,
        {"intensity": _intensity},
        fractions=FRACTIONS,
        repeats=REPEATS,
        store=store,
        progress=False,
    ).run(*digits)
    assert not log.exists()
    assert {mode: c.to_dict() for mode, c in rerun.items()} == serial
