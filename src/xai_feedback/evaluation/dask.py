"""Run retraining sweeps on dask.distributed workers that train as fast as a plain process.

:class:`~xai_feedback.evaluation.RetrainSweep`, :class:`~xai_feedback.evaluation.ROAR` and
:class:`~xai_feedback.evaluation.KAR` take any :class:`concurrent.futures.Executor`; a dask
client's executor is one. Out of the box, dask's nanny starts every worker process with
``MALLOC_TRIM_THRESHOLD_=65536`` (dask config ``distributed.nanny.pre-spawn-environ``). Any
explicit value of that variable turns off glibc's dynamic mmap threshold, so every large
tensor PyTorch allocates is a fresh ``mmap`` and every free a ``munmap``: a small CPU training
costs about 2.4x the CPU time of a plain process (a 3-epoch GAPNet fit of the digits: 1.98 s
in such a worker, 0.93 s in a worker without the variable, 0.82 s in a plain process). glibc
reads the variable once, when the process starts, so it must be absent from the worker's
environment *before* the worker is spawned; removing it later changes nothing.

- :func:`dask_executor` starts a local cluster whose workers lack the variable, sets their
  torch threads, warms each up once, and yields a :class:`DaskExecutor`;
- :func:`setup_dask_workers` does the same set-up on a cluster you started (and warns if its
  workers have the variable);
- :func:`worker_malloc_trim` reports the variable as each worker process started with it.

dask is optional (``pip install "dask[distributed]"``): this module imports it only when one
of these functions is called.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any, ParamSpec, TypeAlias, TypeVar

import torch

from xai_feedback._checks import check_int
from xai_feedback.errors import DTypeError

if TYPE_CHECKING:
    from types import ModuleType

    from distributed import Client, LocalCluster, Worker, WorkerPlugin

__all__ = [
    "MALLOC_TRIM_VARIABLE",
    "DaskExecutor",
    "MallocTrimWarning",
    "dask_executor",
    "setup_dask_workers",
    "worker_malloc_trim",
]

T = TypeVar("T")
P = ParamSpec("P")

MALLOC_TRIM_VARIABLE = "MALLOC_TRIM_THRESHOLD_"
"""The glibc variable dask's nanny sets in its workers (any value slows torch training)."""

PRE_SPAWN_KEY = f"distributed.nanny.pre-spawn-environ.{MALLOC_TRIM_VARIABLE}"
"""The dask config key to set to ``None`` before creating a cluster (see :func:`dask_executor`)."""

PLUGIN_NAME = "xai_feedback-torch-setup"
"""Name of the worker plugin :func:`setup_dask_workers` registers."""

_INSTALL_HINT = 'pip install "dask[distributed]"'

Warmup: TypeAlias = "bool | Callable[[], object]"
"""What ``warmup=`` takes: ``True`` (one tiny GAPNet fit), ``False``, or a callable."""


class MallocTrimWarning(UserWarning):
    """Workers started with ``MALLOC_TRIM_THRESHOLD_`` set: torch training runs ~2x slower."""


def _import_distributed() -> ModuleType:
    """``distributed``, or an ImportError that says how to install it."""
    try:
        import distributed
    except ImportError as error:
        raise ImportError(
            f"running sweeps on dask needs dask.distributed: {_INSTALL_HINT}"
        ) from error
    return distributed


def _startup_value(name: str) -> str | None:
    """``name`` in the environment this process started with (what glibc read).

    Reads ``/proc/self/environ``, which later changes to ``os.environ`` do not alter; where
    it does not exist (not Linux, hence not glibc) falls back to ``os.environ``.
    """
    try:
        with open("/proc/self/environ", "rb") as handle:
            environ = handle.read()
    except OSError:
        return os.environ.get(name)
    prefix = name.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


def worker_malloc_trim(client: Client) -> dict[str, str | None]:
    """``MALLOC_TRIM_THRESHOLD_`` as each worker process started with it (``None``: absent).

    Reads each worker's ``/proc/self/environ``: the environment glibc saw at start-up.
    ``client.run(os.environ.get, ...)`` is no substitute: the nanny sets the variable in
    ``os.environ`` after the worker started, whether or not the process started with it.

    Args:
        client: A client connected to the workers to inspect.

    Returns:
        ``{worker address: value or None}``.

    Example:
        >>> with dask_executor(1, warmup=False) as executor:  # doctest: +SKIP
        ...     worker_malloc_trim(executor.client)
        {'tcp://127.0.0.1:39315': None}
    """
    values: dict[str, str | None] = client.run(_startup_value, MALLOC_TRIM_VARIABLE)
    return values


def _warm_up() -> None:
    """One tiny GAPNet fit (forward, backward, Adam step): torch's lazy set-up, done once."""
    from xai_feedback.data import ImageDataset
    from xai_feedback.models import GAPNet
    from xai_feedback.training import fit

    g = torch.Generator().manual_seed(0)
    data = ImageDataset(torch.rand(16, 1, 8, 8, generator=g), torch.arange(16) % 10)
    fit(GAPNet(width=2, pools=2, generator=g), data, epochs=1, batch_size=8, generator=g)


def _torch_setup_plugin(torch_threads: int, warmup: Callable[[], object] | None) -> WorkerPlugin:
    """A worker plugin that sets torch's threads and runs ``warmup`` once per worker process.

    A plugin, not ``client.run``: a worker that the nanny restarts (after a crash) runs it
    too. The class is made here because dask is imported lazily (cloudpickle sends it by value).
    """
    from distributed import WorkerPlugin

    class TorchSetup(WorkerPlugin):
        name = PLUGIN_NAME

        def __init__(self) -> None:
            self.torch_threads = torch_threads
            self.warmup = warmup
            self.warmups = 0  # counted on the worker: the tests check it stays at 1

        def setup(self, worker: Worker) -> None:
            torch.set_num_threads(self.torch_threads)
            if self.warmup is not None:
                self.warmup()
                self.warmups += 1

    return TorchSetup()


def _warmup_function(warmup: Any) -> Callable[[], object] | None:
    if warmup is True:
        return _warm_up
    if warmup is False or warmup is None:
        return None
    if callable(warmup):
        return warmup  # type: ignore[no-any-return]
    raise DTypeError(f"`warmup` must be a bool or a callable, got {type(warmup).__name__}.")


def setup_dask_workers(client: Client, *, torch_threads: int = 1, warmup: Warmup = True) -> None:
    """Prepare a cluster's workers for torch training (for a cluster you started yourself).

    Sets ``torch.set_num_threads(torch_threads)`` in every worker and runs the warm-up once
    per worker process, now and in any worker that starts later (a worker plugin), and warns
    if the workers started with ``MALLOC_TRIM_THRESHOLD_`` set, which no set-up can undo.

    Args:
        client: A client connected to the cluster.
        torch_threads: Torch intra-op threads per worker (one per core the worker may use).
        warmup: ``True``: one tiny GAPNet fit per worker, so the first run does not pay for
            torch's lazy set-up; a callable: call that instead (picklable, no arguments);
            ``False``: none.

    Warns:
        MallocTrimWarning: A worker started with ``MALLOC_TRIM_THRESHOLD_`` in its
            environment. Create the cluster inside
            ``dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_":
            None})``, with the variable absent from the environment, or use
            :func:`dask_executor`.

    Example:
        >>> import dask  # doctest: +SKIP
        >>> from distributed import Client, LocalCluster  # doctest: +SKIP
        >>> key = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
        >>> with dask.config.set({key: None}):  # doctest: +SKIP
        ...     cluster = LocalCluster(n_workers=2, threads_per_worker=1)
        >>> client = Client(cluster)  # doctest: +SKIP
        >>> setup_dask_workers(client, torch_threads=1)  # doctest: +SKIP
    """
    torch_threads = check_int(torch_threads, "torch_threads", minimum=1)
    function = _warmup_function(warmup)
    _import_distributed()
    found = {address: v for address, v in worker_malloc_trim(client).items() if v is not None}
    if found:
        warnings.warn(
            MallocTrimWarning(
                f"{len(found)} dask worker(s) started with {MALLOC_TRIM_VARIABLE}="
                f"{next(iter(found.values()))}, which makes torch training about 2x slower "
                "(glibc's dynamic mmap threshold is off). Start the workers without it: create "
                f"the cluster inside dask.config.set({{{PRE_SPAWN_KEY!r}: None}}) with "
                f"{MALLOC_TRIM_VARIABLE} absent from os.environ (for `dask worker`, set it to "
                "null under distributed.nanny.pre-spawn-environ in a dask YAML config), or "
                "use xai_feedback.evaluation.dask_executor()."
            ),
            stacklevel=2,
        )
    client.register_plugin(_torch_setup_plugin(torch_threads, function))


@contextlib.contextmanager
def _workers_without_malloc_trim() -> Iterator[None]:
    """Workers spawned inside this block start without ``MALLOC_TRIM_THRESHOLD_``.

    Sets the nanny's pre-spawn value to ``None`` and removes the variable from ``os.environ``
    (where an earlier nanny may have left it: workers inherit this process's environment);
    both are restored on exit.
    """
    import dask

    saved = os.environ.pop(MALLOC_TRIM_VARIABLE, None)
    try:
        with dask.config.set({PRE_SPAWN_KEY: None}):
            yield
    finally:
        if saved is None:
            os.environ.pop(MALLOC_TRIM_VARIABLE, None)
        else:
            os.environ[MALLOC_TRIM_VARIABLE] = saved


class DaskExecutor(Executor):
    """A :class:`concurrent.futures.Executor` on a dask client (what :func:`dask_executor` yields).

    Submits with ``pure=False`` (every call is a new task: no hashing of its arguments).

    Attributes:
        client: The ``distributed.Client`` (for ``client.run``, the dashboard, ...).
        cluster: The ``LocalCluster`` started by :func:`dask_executor` (``None`` otherwise).
    """

    def __init__(self, client: Client, cluster: LocalCluster | None = None) -> None:
        self.client = client
        self.cluster = cluster
        self._executor: Executor = client.get_executor(pure=False)  # type: ignore[no-untyped-call]

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` on a worker; returns its future."""
        return self._executor.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new tasks; wait for the running ones, or cancel them (``cancel_futures``)."""
        self._executor.shutdown(wait=wait and not cancel_futures)


@contextlib.contextmanager
def dask_executor(
    n_workers: int = 2,
    *,
    threads_per_worker: int = 1,
    torch_threads: int = 1,
    warmup: Warmup = True,
    **cluster_kwargs: Any,
) -> Iterator[DaskExecutor]:
    """A local dask cluster of worker processes set up for torch training, as an executor.

    The workers start without ``MALLOC_TRIM_THRESHOLD_`` (a worker started with it trains
    about 2.4x slower), with ``torch_threads`` torch threads each, and each runs the warm-up
    once (not once per task). The cluster and its client close on exit.

    Args:
        n_workers: Worker processes (one per core is the usual choice).
        threads_per_worker: Tasks each worker runs at once.
        torch_threads: Torch intra-op threads per worker.
        warmup: As in :func:`setup_dask_workers`.
        **cluster_kwargs: More ``distributed.LocalCluster`` arguments (defaults here:
            ``processes=True``, ``dashboard_address=None``, ``host="127.0.0.1"``).

    Yields:
        A :class:`DaskExecutor`; its ``client`` and ``cluster`` are the running ones.

    Raises:
        ImportError: dask.distributed is not installed.

    Example:
        >>> from xai_feedback.evaluation import ROAR
        >>> with dask_executor(2) as executor:  # doctest: +SKIP
        ...     curves = ROAR(train_fn, methods, executor=executor).run(train, test)
    """
    n_workers = check_int(n_workers, "n_workers", minimum=1)
    threads_per_worker = check_int(threads_per_worker, "threads_per_worker", minimum=1)
    torch_threads = check_int(torch_threads, "torch_threads", minimum=1)
    _warmup_function(warmup)  # check it before starting anything
    distributed = _import_distributed()
    options: dict[str, Any] = {
        "processes": True,
        "dashboard_address": None,
        "host": "127.0.0.1",
        **cluster_kwargs,
    }
    with (
        _workers_without_malloc_trim(),
        distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=threads_per_worker, **options
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        setup_dask_workers(client, torch_threads=torch_threads, warmup=warmup)
        executor = DaskExecutor(client, cluster)
        try:
            yield executor
        finally:
            executor.shutdown(wait=False)
