"""Wall time of the digits ROAR sweep on a dask.distributed LocalCluster of 1 and 2 workers.

The sweep is ``RetrainSweep`` unchanged, given ``Client.get_executor()``; each worker is one
process with one torch thread. Also runs the sweep serially (no executor, one thread) and
checks that every run gives the same curves. Needs ``pip install "dask[distributed]"``.

Run: python benchmarks/dask_sweep.py [--workers 1,2] [--fractions 0.3,0.7] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from torch import nn

from xai_feedback.attribution import attribute
from xai_feedback.data import ImageDataset, load_digits
from xai_feedback.evaluation import Curves, RetrainSweep
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


def _warm_up() -> None:
    """Import what a run needs on a worker (so the timing excludes the imports)."""
    torch.set_num_threads(1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", type=lambda s: [int(w) for w in s.split(",")])
    parser.add_argument(
        "--fractions", default="0.3,0.7", type=lambda s: [float(f) for f in s.split(",")]
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=0, help="0: all 1437 images")
    parser.add_argument("--serial", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        print('needs dask.distributed: pip install "dask[distributed]"', file=sys.stderr)
        return 1

    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the worker processes
    torch.set_num_threads(1)
    train, test = load_digits("train"), load_digits("test")
    if args.train_size:
        train = train.subset(torch.arange(args.train_size))
    g = torch.Generator().manual_seed(0)
    base = train_gapnet(train, g, width=16, epochs=5)
    saliency = (
        attribute(base, train.images, train.labels, method="saliency").detach(),
        attribute(base, test.images, test.labels, method="saliency").detach(),
    )
    methods = {"saliency": saliency}
    runs = 2 * len(args.fractions) * args.repeats
    print(
        f"digits ROAR sweep: {len(train)} train / {len(test)} test images, rankings random + "
        f"saliency, fractions {args.fractions}, {args.repeats} repeats = {runs} retrainings of "
        f"GAPNet(width={args.width}, pools=2) x {args.epochs} epochs (base model accuracy "
        f"{accuracy(base, test):.3f}); 1 torch thread per worker, {os.cpu_count()} CPU cores"
    )
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
        results["serial (no executor)"] = (seconds, busy(store), cpu, curves["roar"].to_dict())
    for n in args.workers:
        store = scratch / f"dask{n}"
        start = time.perf_counter()
        with (
            LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                host="127.0.0.1",
            ) as cluster,
            Client(cluster) as client,
        ):
            client.run(_warm_up)
            ready = time.perf_counter() - start
            start = time.perf_counter()
            before = client.run(_cpu_seconds)
            curves = _sweep(args, methods, client.get_executor(), store).run(train, test)
            after = client.run(_cpu_seconds)
            cpu = sum(after[w] - before[w] for w in before if w in after)
        seconds = time.perf_counter() - start
        results[f"dask, {n} worker(s)"] = (seconds, busy(store), cpu, curves["roar"].to_dict())
        print(f"  {n} worker(s): cluster start and imports {ready:.1f} s (not included below)")
    shutil.rmtree(scratch, ignore_errors=True)
    reference = next(iter(results.values()))[3]
    print(
        "\n| run | wall time (s) | wall time inside the runs, summed (s) | CPU time of the "
        "workers (s) | runs/min | same curves as the first row |"
    )
    print("|---|---|---|---|---|---|")
    for name, (seconds, inside, cpu, values) in results.items():
        same = "yes" if values == reference else "NO"
        print(
            f"| {name} | {seconds:.1f} | {inside:.1f} | {cpu:.1f} | {60 * runs / seconds:.1f} "
            f"| {same} |"
        )
    print()
    print(Curves.from_dict(reference).table())
    return 0 if all(v[3] == reference for v in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
