"""What every benchmark shares: arguments, resuming through the result store, tables, figures.

A benchmark script builds its parser with :func:`parser`, reads its arguments with :func:`parse`
(``--quick`` for a smoke-sized run into another folder, ``--threads``), keeps each finished run
in a :class:`xai_feedback.evaluation.RunStore` (:func:`cached`, :func:`resume`; or keyed by the
fingerprint of its settings: :func:`settings_store`, :func:`stored_run`, :func:`resume_run`),
prints :func:`markdown_table` rows of :func:`mean_std` cells and draws an optional
:func:`figure`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from xai_feedback._io import write_json_atomic
from xai_feedback.evaluation import RunStore
from xai_feedback.evaluation.fingerprint import Fingerprint
from xai_feedback.evaluation.store import check_json_object

__all__ = [
    "RunStore",
    "cached",
    "figure",
    "markdown_table",
    "mean_std",
    "parse",
    "parser",
    "resume",
    "resume_run",
    "run_grid",
    "run_store",
    "settings_store",
    "step_cost_table",
    "stored_run",
    "subprocess_peak_mib",
    "time_round_robin",
    "write_json_atomic",
]

RESULTS = Path("benchmarks/results")


def time_round_robin(
    runners: Mapping[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Median seconds of each runner: ``warmup + repeats`` rounds, every runner once per round.

    Within a round the runners run in turn, so a change of the machine's load hits all of them
    alike (ratios within one call stay valid); CUDA is synchronized around each call.
    """
    times: dict[str, list[float]] = {name: [] for name in runners}
    for round_ in range(warmup + repeats):
        for name, fn in runners.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def subprocess_peak_mib(script: str, options: Sequence[str]) -> float:
    """The peak MiB a benchmark's ``--measure`` child prints last, run in a fresh process.

    ``script`` is run by this interpreter with ``options``, glibc's mmap threshold fixed at
    64 KiB and trimming off (so freed tensors go back to the system and the resident set
    follows live memory; ``models._peak_mib`` measures inside the child). A failing child
    raises :class:`subprocess.CalledProcessError` (its ``stderr`` kept).
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    command = [sys.executable, str(Path(script).resolve()), *options]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def step_cost_table(
    seconds: Mapping[str, float],
    memory: Mapping[str, float],
    arms: Sequence[str],
    digits: int = 3,
) -> str:
    """Seconds and peak MiB of one step per arm, each also as a ratio to ``"vanilla"``."""
    rows = [
        [
            a,
            f"{seconds[a]:.{digits}f}",
            f"{seconds[a] / seconds['vanilla']:.2f}x",
            f"{memory[a]:.0f}" if a in memory else "-",
            f"{memory[a] / memory['vanilla']:.2f}x"
            if a in memory and memory.get("vanilla")
            else "-",
        ]
        for a in arms
    ]
    return markdown_table(["arm", "seconds", "vs vanilla", "peak MiB", "vs vanilla"], rows)


def run_store(root: Path) -> RunStore:
    """A locked, safely named store whose records are the benchmark's own JSON objects."""
    return RunStore(root, record_check=check_json_object)


NO_MATPLOTLIB = "matplotlib is not installed: no figure (pip install 'xai-feedback[plot]')"


def parser(
    name: str,
    doc: str | None,
    *,
    out: str | None = None,
    seeds: int | None = None,
    threads: bool = True,
    quick: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """Parser of ``xai-feedback bench NAME`` with the shared options.

    ``--out`` (default ``benchmarks/results/<out or name>``), ``--seeds`` when ``seeds`` is
    given, ``--threads`` (torch threads, 0: torch's default) unless ``threads`` is false, and
    ``--quick``: the options ``quick`` put before the command line (which can still override
    them) and results in ``benchmarks/results/quick/<name>`` unless ``--out`` is given.
    """
    p = argparse.ArgumentParser(
        prog=f"xai-feedback bench {name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=RESULTS / (out or name))
    if seeds is not None:
        p.add_argument("--seeds", type=int, default=seeds)
    if threads:
        p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke-sized run ({' '.join(quick) or 'the defaults'}) into "
        f"{RESULTS / 'quick' / name} unless --out is given",
    )
    p.set_defaults(_quick=list(quick), _name=name)
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` (default: the command line); apply ``--quick`` and ``--threads``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if args.quick:
        args = p.parse_args([*args._quick, *argv])
        if not any(a == "--out" or a.startswith("--out=") for a in argv):
            args.out = RESULTS / "quick" / args._name
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    return args


def cached(
    store: RunStore, parts: Sequence[str], *, fresh: bool = False, **expected: Any
) -> dict[str, Any] | None:
    """The finished run ``parts`` if stored with these ``expected`` values (else ``None``)."""
    if fresh:
        return None
    record = store.get(parts)
    if record is None or any(record.get(k) != v for k, v in expected.items()):
        return None
    return record


def resume(
    store: RunStore,
    parts: Sequence[str],
    run: Callable[[], dict[str, Any]],
    *,
    fresh: bool = False,
    **expected: Any,
) -> dict[str, Any]:
    """The stored run ``parts`` (see :func:`cached`), or ``run()``, stored as soon as it ends."""
    record = cached(store, parts, fresh=fresh, **expected)
    if record is None:
        record = run()
        store.put(parts, record)
    return record


def settings_store(root: Path) -> RunStore:
    """A store of the benchmark's own records, each fingerprinted by its run's settings.

    A record made with other settings is never reused: :func:`resume_run` moves it to
    ``root/_stale/`` and runs again.
    """
    return RunStore(root, on_mismatch="recompute", record_check=check_json_object)


def stored_run(
    store: RunStore, parts: Sequence[str], settings: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The finished run ``parts`` if it was stored with these ``settings`` (nothing is moved)."""
    record = store.get(parts)
    if record is None or record.get("fingerprint") != Fingerprint.of(settings).digest:
        return None
    return record


def resume_run(
    store: RunStore,
    parts: Sequence[str],
    settings: Mapping[str, Any],
    run: Callable[[], dict[str, Any]],
    *,
    fresh: bool = False,
) -> dict[str, Any]:
    """The run ``parts`` stored with these ``settings``, or ``run()``, stored as soon as it ends.

    The record keeps the settings' fingerprint and, under ``"identity"``, the settings; a
    record of the same run with other settings is set aside (see :func:`settings_store`).
    """
    key = Fingerprint.of(settings)
    record = None if fresh else store.get(parts, key)
    if record is None:
        record = store.put(parts, run(), key)
    return record


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``"mean ± std"`` of ``values`` (sample std; 0 for one value, ``"-"`` for none)."""
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table: the header row, the rule, then one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def figure(path: Path, draw: Callable[[Any], Any], dpi: int = 110) -> bool:
    """Save ``draw(pyplot)`` (a figure) at ``path`` (Agg backend); False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print(NO_MATPLOTLIB)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(plt)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    print(f"figure: {path}")
    return True


def run_tasks(
    args: argparse.Namespace,
    todo: Sequence[tuple[Any, tuple[Any, ...], dict[str, Any]]],
    run: Callable[..., dict[str, Any]],
    keep: Callable[[Any, dict[str, Any], dict[str, Any]], None],
) -> None:
    """``keep(parts, settings, run(*run_args, settings))`` for each ``(parts, run_args, settings)``.

    On :func:`xai_feedback.evaluation.dask.dask_executor` with ``args.dask`` (``args.workers``
    processes of ``args.threads`` torch threads; ``run`` must be a module-level function of a
    benchmark, which the workers import from this folder), else one after the other.
    """
    if not (args.dask and todo):
        for parts, run_args, settings in todo:
            keep(parts, settings, run(*run_args, settings))
        return
    from xai_feedback.evaluation.dask import dask_executor

    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [here, *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    with dask_executor(args.workers, torch_threads=max(1, args.threads)) as executor:
        futures = [(p, s, executor.submit(run, *r, s)) for p, r, s in todo]
        for parts, settings, future in futures:
            keep(parts, settings, future.result())


Task = tuple[tuple[str, ...], tuple[Any, ...], dict[str, Any]]
"""``(store key parts, run_one's arguments, settings)`` of one run of a grid."""


def run_grid(
    args: argparse.Namespace,
    store: RunStore,
    tasks: Sequence[Task],
    run: Callable[..., dict[str, Any]],
    *,
    unkeyed: Sequence[str],
) -> list[dict[str, Any]]:
    """Every task's record: stored ones reused, the others run (:func:`run_tasks`) and stored.

    A run is keyed by its settings less ``unkeyed`` (threads, device and the like: how it ran,
    not what it is). ``args.fresh`` runs every task again; ``args.report`` (when the parser
    has it) returns the stored records only. Each new record is printed as one JSON line
    (its per-epoch ``curve`` entries left out).
    """

    def identity(settings: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in settings.items() if k not in unkeyed}

    records: dict[tuple[str, ...], dict[str, Any]] = {}
    todo: list[Task] = []
    for parts, run_args, settings in tasks:
        record = None if args.fresh else stored_run(store, parts, identity(settings))
        if record is None:
            todo.append((parts, run_args, settings))
        else:
            records[parts] = record
    print(f"{len(records)} runs stored, {len(todo)} to run", flush=True)
    if getattr(args, "report", False):
        return [records[p] for p, _, _ in tasks if p in records]

    def keep(parts: tuple[str, ...], settings: dict[str, Any], record: dict[str, Any]) -> None:
        records[parts] = resume_run(store, parts, identity(settings), lambda: record, fresh=True)
        short = {k: v for k, v in record.items() if "curve" not in k}
        print(json.dumps(short), flush=True)

    run_tasks(args, todo, run, keep)
    return [records[p] for p, _, _ in tasks]
