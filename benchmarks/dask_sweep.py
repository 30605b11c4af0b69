"""Wall time of the digits ROAR sweep: serial, and on 2 dask workers set up by dask_executor.

The sweep is ``RetrainSweep`` unchanged, given the executor of
:func:`xai_feedback.evaluation.dask_executor` (worker processes started without
``MALLOC_TRIM_THRESHOLD_``, one torch thread each, warmed up once). It also runs the sweep
serially (no executor, one thread) and, with ``--naive-workers``, on a plain ``LocalCluster``
whose workers start with dask's ``MALLOC_TRIM_THRESHOLD_=65536`` (same threads and warm-up:
only the variable differs), and checks that every path gives the same curves (exit status 1
if not). Needs ``pip install "dask[distributed]"``.

Run: python benchmarks/dask_sweep.py [--workers 2] [--fractions 0.3,0.7] [--repeats 4]
[--naive-workers]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import nn

from xai_feedback.attribution import attribute
from xai_feedback.data import ImageDataset, load_digits
from xai_feedback.evaluation import (
    MALLOC_TRIM_VARIABLE,
    Curves,
    DaskExecutor,
    MallocTrimWarning,
    RetrainSweep,
    dask_executor,
    setup_dask_workers,
    worker_malloc_trim,
)
from xai_feedback.models import GAPNet
from xai_feedback.training import accuracy, fit


def train_gapnet(
    data: ImageDataset, generator: torch.Generator, *, width: int, epochs: int
) -> nn.Module:
    """A fresh GAPNet(width, pools=2) trained for ``epochs`` (module level: picklable)."""
    model = GAPNet(width=width, pools=2, generator=generator)
    fit(model, data, epochs=epochs, generator=generator)
    return model.eval()


def _sweep(args: argparse.Namespace, methods: dict, executor: object, store: Path) -> RetrainSweep:
    return RetrainSweep(
        partial(train_gapnet, width=args.width, epochs=args.epochs),
        methods,
        modes=("roar",),
        fractions=args.fractions,
        repeats=args.repeats,
        executor=executor,  # type: ignore[arg-type]
        store=store,
        max_pending=8,
        progress=False,
    )


def _cpu_seconds() -> float:
    """User + system CPU time of this process (run on each worker by ``client.run``)."""
    times = os.times()
    return times.user + times.system


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


@contextlib.contextmanager
def _naive_executor(n: int) -> Iterator[DaskExecutor]:
    """A plain LocalCluster (workers start with MALLOC_TRIM_THRESHOLD_), same set-up."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as client,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", MallocTrimWarning)  # the point of this path
        setup_dask_workers(client, torch_threads=1)
        yield DaskExecutor(client, cluster)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--fractions", default="0.3,0.7", type=lambda s: [float(f) for f in s.split(",")]
    )
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=0, help="0: all 1437 images")
    parser.add_argument("--test-size", type=int, default=0, help="0: all 360 images")
    parser.add_argument("--serial", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--naive-workers",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also run on a plain LocalCluster (workers with MALLOC_TRIM_THRESHOLD_)",
    )
    args = parser.parse_args(argv)
    try:
        import distributed  # noqa: F401
    except ImportError:
        print('needs dask.distributed: pip install "dask[distributed]"', file=sys.stderr)
        return 1

    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the worker processes
    torch.set_num_threads(1)
    train, test = load_digits("train"), load_digits("test")
    if args.train_size:
        train = train.subset(torch.arange(args.train_size))
    if args.test_size:
        test = test.subset(torch.arange(args.test_size))
    g = torch.Generator().manual_seed(0)
    base = train_gapnet(train, g, width=16, epochs=5)
    saliency = (
        attribute(base, train.images, train.labels, method="saliency").detach(),
        attribute(base, test.images, test.labels, method="saliency").detach(),
    )
    methods = {"saliency": saliency}
    runs = 2 * len(args.fractions) * args.repeats
    n = args.workers
    print(
        f"digits ROAR sweep: {len(train)} train / {len(test)} test images, rankings random + "
        f"saliency, fractions {args.fractions}, {args.repeats} repeats = {runs} retrainings of "
        f"GAPNet(width={args.width}, pools=2) x {args.epochs} epochs (base model accuracy "
        f"{accuracy(base, test):.3f}); 1 torch thread per process, {os.cpu_count()} CPU cores; "
        f"load average (1/5/15 min) at start {_load()}"
    )
    # name: (wall s, seconds inside the runs summed, CPU s, curves)
    results: dict[str, tuple[float, float, float, dict]] = {}
    scratch = Path(tempfile.mkdtemp(prefix="dask_sweep_"))

    def busy(store: Path) -> float:
        """Seconds spent inside the runs (masking, training, evaluation), summed."""
        return sum(json.loads(p.read_text())["seconds"] for p in store.rglob("f*_r*.json"))

    if args.serial:
        store = scratch / "serial"
        start, cpu = time.perf_counter(), _cpu_seconds()
        curves = _sweep(args, methods, None, store).run(train, test)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
        results["serial, 1 thread"] = (seconds, busy(store), cpu, curves["roar"].to_dict())
    paths = [(f"dask_executor({n})", partial(dask_executor, n, torch_threads=1))]
    if args.naive_workers:
        paths.append((f"plain LocalCluster, {n} workers", partial(_naive_executor, n)))
    for name, make in paths:
        store = scratch / f"dask{len(results)}"
        start = time.perf_counter()
        with make() as executor:
            ready = time.perf_counter() - start
            trim = set(worker_malloc_trim(executor.client).values())
            start = time.perf_counter()
            before = executor.client.run(_cpu_seconds)
            curves = _sweep(args, methods, executor, store).run(train, test)
            after = executor.client.run(_cpu_seconds)
            seconds = time.perf_counter() - start
            cpu = sum(after[w] - before[w] for w in before if w in after)
        results[name] = (seconds, busy(store), cpu, curves["roar"].to_dict())
        print(
            f"  {name}: cluster start and warm-up {ready:.1f} s (not included below); "
            f"workers' {MALLOC_TRIM_VARIABLE} at start-up: {sorted(map(str, trim))}"
        )
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"load average (1/5/15 min) at the end: {_load()}")
    reference = next(iter(results.values()))[3]
    serial = results.get("serial, 1 thread")
    print(
        "\n| run | wall time (s) | speedup vs serial | CPU s per run | overhead per run (ms) "
        "| time inside the runs, summed (s) | same curves |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (seconds, inside, cpu, values) in results.items():
        same = "yes" if values == reference else "NO"
        workers = 1 if name == "serial, 1 thread" else n
        speedup = overhead = "-"
        if serial is not None:
            speedup = f"{serial[0] / seconds:.2f}x"
            if workers > 1:  # wall beyond a perfect split of the serial sweep, per run
                overhead = f"{1000 * (seconds - serial[0] / workers) * workers / runs:.0f}"
        print(
            f"| {name} | {seconds:.1f} | {speedup} | {cpu / runs:.2f} | {overhead} | "
            f"{inside:.1f} | {same} |"
        )
    print(
        "\nCPU s per run: this process's CPU time (serial) or the workers' (dask), divided by "
        f"the {runs} runs. Overhead per run: (wall - serial wall / workers) x workers / runs, "
        "the wall time each run costs a worker beyond its serial time."
    )
    print()
    print(Curves.from_dict(reference).table())
    return 0 if all(v[3] == reference for v in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
