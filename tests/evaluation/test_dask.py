"""dask_executor: workers start without MALLOC_TRIM_THRESHOLD_, set up once, same curves.

Real LocalClusters of worker processes (about 15 s in all): the variable is read from each
worker's /proc/self/environ (what glibc saw at start-up), not from its os.environ.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch

from xai_feedback.data import load_digits
from xai_feedback.errors import DTypeError, RangeError
from xai_feedback.evaluation import (
    MALLOC_TRIM_VARIABLE,
    ROAR,
    DaskExecutor,
    MallocTrimWarning,
    RetrainSweep,
    dask_executor,
    setup_dask_workers,
    worker_malloc_trim,
)
from xai_feedback.evaluation.dask import PLUGIN_NAME, PRE_SPAWN_KEY, _workers_without_malloc_trim

from .sweep_helpers import intensity, train_means

distributed = pytest.importorskip("distributed", reason="needs dask[distributed]")

# the cheap fill: the imputation is not what is tested here
SWEEP = {"fractions": (0.5,), "repeats": 2, "progress": False, "fill": "dataset_mean"}


def log_pid(path: str) -> None:
    """A warm-up that leaves one line per call: the pid of the worker that ran it."""
    with Path(path).open("a") as handle:
        handle.write(f"{os.getpid()}\n")


@pytest.fixture(scope="module")
def digits() -> tuple:
    train, test = load_digits("train"), load_digits("test")
    return train.subset(torch.arange(100)), test.subset(torch.arange(40))


@pytest.fixture(scope="module")
def warmup_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("warmup") / "pids.txt"


@pytest.fixture(scope="module")
def executor(warmup_log: Path) -> Iterator[DaskExecutor]:
    # the variable in this process's environment, as an earlier nanny leaves it: the
    # workers must start without it all the same
    old = os.environ.get(MALLOC_TRIM_VARIABLE)
    os.environ[MALLOC_TRIM_VARIABLE] = "65536"
    try:
        with dask_executor(2, torch_threads=2, warmup=partial(log_pid, str(warmup_log))) as ex:
            yield ex
    finally:
        if old is None:
            os.environ.pop(MALLOC_TRIM_VARIABLE, None)
        else:
            os.environ[MALLOC_TRIM_VARIABLE] = old


def test_a_plain_local_cluster_starts_its_workers_with_it_and_setup_warns(monkeypatch) -> None:
    import dask

    monkeypatch.delenv(MALLOC_TRIM_VARIABLE, raising=False)  # from dask's config alone
    # dask's default, pinned: an open dask_executor sets it to None for its lifetime
    with (
        dask.config.set({PRE_SPAWN_KEY: 65536}),
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        assert set(worker_malloc_trim(client).values()) == {"65536"}
        with pytest.warns(MallocTrimWarning, match="pre-spawn-environ"):
            setup_dask_workers(client, warmup=False)
        assert set(client.run(torch.get_num_threads).values()) == {1}


def test_dask_executor_workers_start_without_the_variable(executor: DaskExecutor) -> None:
    values = worker_malloc_trim(executor.client)
    assert len(values) == 2
    assert set(values.values()) == {None}


def test_the_variable_and_the_config_are_restored_on_exit(monkeypatch) -> None:
    import dask

    monkeypatch.setenv(MALLOC_TRIM_VARIABLE, "123")
    default = dask.config.get(PRE_SPAWN_KEY)
    with _workers_without_malloc_trim():
        assert MALLOC_TRIM_VARIABLE not in os.environ
        assert dask.config.get(PRE_SPAWN_KEY) is None
    assert os.environ[MALLOC_TRIM_VARIABLE] == "123"
    assert dask.config.get(PRE_SPAWN_KEY) == default


def test_torch_threads_are_set_in_the_task_threads(executor: DaskExecutor) -> None:
    threads = [executor.submit(torch.get_num_threads) for _ in range(4)]
    assert {f.result() for f in threads} == {2}  # the nanny's OMP_NUM_THREADS=1 overridden


def test_sweeps_through_the_executor_equal_the_serial_ones(
    executor: DaskExecutor, digits: tuple, warmup_log: Path
) -> None:
    methods = {"intensity": intensity}
    for sweep in (RetrainSweep, ROAR):
        serial = sweep(train_means, methods, **SWEEP).run(*digits)
        parallel = sweep(train_means, methods, executor=executor, **SWEEP).run(*digits)
        assert {m: c.to_dict() for m, c in parallel.items()} == {
            m: c.to_dict() for m, c in serial.items()
        }
    # 12 runs later, the warm-up has still run once in each worker process, and only there
    pids = warmup_log.read_text().split()
    assert sorted(pids) == sorted(str(p) for p in executor.client.run(os.getpid).values())
    counts = executor.client.run(lambda dask_worker: dask_worker.plugins[PLUGIN_NAME].warmups)
    assert list(counts.values()) == [1, 1]


def test_arguments_are_checked_before_anything_starts() -> None:
    with pytest.raises(RangeError, match="n_workers"), dask_executor(0):
        pass
    with pytest.raises(DTypeError, match="warmup"), dask_executor(1, warmup="yes"):  # type: ignore[arg-type]
        pass


def test_without_dask_the_error_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails
    with pytest.raises(ImportError, match=r'pip install "dask\[distributed\]"'), dask_executor(1):
        pass


def test_importing_the_package_does_not_import_dask() -> None:
    code = (
        "import sys, xai_feedback.evaluation as e; e.dask_executor; "
        "assert not {'dask', 'distributed'} & set(sys.modules), 'dask imported'"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
