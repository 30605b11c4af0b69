"""One pass of a retraining sweep in the client process: fingerprints, store, dispatch, curves.

:meth:`RetrainSweep.run <xai_feedback.evaluation.RetrainSweep.run>` builds a :class:`SweepPass`
for its data: the :class:`Keys` (what every record depends on), the records the store already
holds, and the runs still to do, handed to :func:`~._dispatch.dispatch` and written one by one.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

import torch

import xai_feedback
from xai_feedback._progress import progress_bar
from xai_feedback.data import ImageDataset
from xai_feedback.errors import DTypeError
from xai_feedback.evaluation._dispatch import dispatch
from xai_feedback.evaluation._retrain import Payload, Record, Task, run_task
from xai_feedback.evaluation._scores import method_scores
from xai_feedback.evaluation._types import AttributionSource, EvalFn, MethodSpec, TrainFn
from xai_feedback.evaluation.fingerprint import Fingerprint, identity, tensor_digest
from xai_feedback.evaluation.results import Curves
from xai_feedback.evaluation.store import RunStore

__all__ = ["Keys", "Sweep", "SweepPass"]

SPLITS = ("train", "test")


class Sweep(Protocol):
    """What a sweep pass reads of its sweep (:class:`~xai_feedback.evaluation.RetrainSweep`)."""

    train_fn: TrainFn
    eval_fn: EvalFn
    methods: dict[str, MethodSpec]
    modes: tuple[str, ...]
    fractions: list[float]
    fill: str
    squared: bool
    store: RunStore | None
    executor: Executor | None
    progress: bool
    seed: int
    retry_failed: bool
    max_pending: int
    train_config: Any
    method_config: dict[str, Any]
    dataset_id: str | None

    def tasks(self) -> list[Task]:
        """Every (mode, method, fraction, repeat) of the sweep."""


def _data_identity(data: ImageDataset, dataset_id: str | None, split: str) -> dict[str, Any]:
    """What identifies one split: its tensors' hashes, or the user's id (then not hashed)."""
    shape = list(data.images.shape)
    if dataset_id is not None:
        return {"id": f"{dataset_id}/{split}", "shape": shape}
    masks = None if data.masks is None else tensor_digest(data.masks)
    images, labels = tensor_digest(data.images), tensor_digest(data.labels)
    return {"images": images, "labels": labels, "masks": masks, "shape": shape}


def _split_source(name: str, entry: MethodSpec, split: str) -> AttributionSource:
    """The attribution source of one split: the shared one, or that split's tensor."""
    if not isinstance(entry, tuple):
        return entry
    source = entry[0] if split == "train" else entry[1]
    if not isinstance(source, torch.Tensor):
        raise DTypeError(f"`methods[{name!r}]` must hold tensors, got {type(source).__name__}.")
    return source


@dataclass(frozen=True)
class Keys:
    """Fingerprints of a sweep's records: what all share (``base``) plus each one's own."""

    base: dict[str, Any]
    methods: dict[str, Any]
    seed: int

    @classmethod
    def of(cls, sweep: Sweep, train: ImageDataset, test: ImageDataset) -> Keys:
        """The keys of ``sweep`` on this data (data, code, settings, library version)."""
        base = {
            "library": xai_feedback.__version__,
            "data": {
                "train": _data_identity(train, sweep.dataset_id, "train"),
                "test": _data_identity(test, sweep.dataset_id, "test"),
            },
            "train_fn": identity(sweep.train_fn),
            "train_config": identity(sweep.train_config),
            "eval_fn": identity(sweep.eval_fn),
            "fill": sweep.fill,
            "squared": sweep.squared,
        }
        methods: dict[str, Any] = {"random": "random"}
        for name, source in sweep.methods.items():
            config = identity(sweep.method_config.get(name))
            methods[name] = {"source": identity(source), "config": config}
        return cls(base, methods, sweep.seed)

    def run(self, task: Task) -> Fingerprint:
        """Fingerprint of one run: the sweep's inputs, its method, fraction and seeds."""
        return Fingerprint.of(
            {
                **self.base,
                "mode": task.mode,
                "method": self.methods[task.method],
                "fraction": task.fraction,
                "seeds": list(task.seeds(self.seed)),
            }
        )

    def scores(self, name: str, split: str) -> Fingerprint:
        """Fingerprint of one method's cached scores on one split."""
        return Fingerprint.of(
            {
                "library": self.base["library"],
                "data": self.base["data"][split],
                "method": self.methods[name],
                "squared": self.base["squared"],
            }
        )


class SweepPass:
    """One call of ``RetrainSweep.run``: the records found and made, and the runs left."""

    def __init__(self, sweep: Sweep, train: ImageDataset, test: ImageDataset) -> None:
        self.sweep = sweep
        self.store: RunStore | None = sweep.store
        self.keys = Keys.of(sweep, train, test)
        self.records: dict[Task, Record] = {}
        cpu = torch.device("cpu")
        self.data = {"train": train.to(cpu), "test": test.to(cpu)}

    def resume(self) -> list[Task]:
        """Read the records the store holds for this sweep; returns the tasks still to run."""
        tasks = self.sweep.tasks()
        if self.store is None:
            return tasks
        self.store.clean_temporary()
        sweep = self.sweep
        self.store.check_settings(
            {"fill": sweep.fill, "squared": sweep.squared, "seed": sweep.seed}
        )
        pending = []
        for task in tasks:
            record = self.store.get(task.parts, self.keys.run(task))
            if record is not None and (record["status"] == "ok" or not sweep.retry_failed):
                self.records[task] = record
            else:
                pending.append(task)
        return pending

    def scores(self, name: str, split: str) -> torch.Tensor:
        """Per-pixel relevance ``(N, H, W)`` of one method on one split (cached in the store)."""
        key, parts = self.keys.scores(name, split), ("attributions", name, split)
        cached = None if self.store is None else self.store.get_tensor(parts, key)
        if cached is not None:
            return cached
        data = self.data[split]
        source = _split_source(name, self.sweep.methods[name], split)
        what = f"{split} attributions"
        scores = method_scores(name, source, data.images, data.labels, self.sweep.squared, what)
        scores = scores.float().cpu()
        if self.store is not None:
            self.store.put_tensor(parts, scores, key)
        return scores

    def execute(self, pending: list[Task]) -> None:
        """Run ``pending`` on the sweep's executor, writing each record as it finishes."""
        sweep = self.sweep
        needed = [n for n in sweep.methods if n in {t.method for t in pending}]
        scores = {n: tuple(self.scores(n, split) for split in SPLITS) for n in needed}
        mean = self.data["train"].images.mean(dim=(0, 2, 3))
        bar = progress_bar(total=len(pending), desc="ROAR/KAR runs", enabled=sweep.progress)

        make = functools.partial(self.payload, scores=scores, mean=mean)

        def finish(task: Task, record: Record) -> None:
            self.finish(task, record)
            bar.set_postfix_str(f"{task.mode} {task.method} {task.fraction:g}")
            bar.update()

        try:
            dispatch(pending, make, finish, sweep.executor, sweep.max_pending)
        finally:
            bar.close()

    def payload(
        self,
        task: Task,
        scores: dict[str, tuple[torch.Tensor, ...]],
        mean: torch.Tensor,
    ) -> Callable[[], Record]:
        """The call that runs ``task`` (picklable: a worker may run it)."""
        sweep = self.sweep
        train_scores, test_scores = scores.get(task.method, (None, None))
        train_seed, ranking_seed = task.seeds(sweep.seed)
        payload = Payload(
            task=task,
            train_fn=sweep.train_fn,
            eval_fn=sweep.eval_fn,
            train=self.data["train"],
            test=self.data["test"],
            train_scores=train_scores,
            test_scores=test_scores,
            fill=sweep.fill,
            dataset_mean=mean,
            train_seed=train_seed,
            ranking_seed=ranking_seed,
        )
        return functools.partial(run_task, payload)

    def finish(self, task: Task, record: Record) -> None:
        """Label a finished run's record, store it and keep it (or the one stored first)."""
        record.update(
            mode=task.mode, method=task.method, fraction=task.fraction, repeat=task.repeat
        )
        if self.store is not None:
            record = self.store.put(task.parts, record, self.keys.run(task))
        self.records[task] = record

    def curves(self, metric: str) -> dict[str, Curves]:
        """One :class:`Curves` per mode from the records (failures included, with a warning)."""
        sweep = self.sweep
        curves = {m: Curves(m.upper(), metric, list(sweep.fractions)) for m in sweep.modes}
        for task in sweep.tasks():
            record = self.records.get(task)
            if record is None:
                continue
            if record["status"] == "ok":
                curves[task.mode].add(task.method, task.fraction, record["value"])
            else:
                curves[task.mode].fail(task.method, task.fraction, record["error"])
        _warn_failures(self.records, self.store)
        return curves


def _warn_failures(records: dict[Task, Record], store: RunStore | None) -> None:
    failed = [r for r in records.values() if r["status"] != "ok"]
    if not failed:
        return
    where = f" and under {store.root}" if store is not None else ""
    if len(failed) == len(records):
        message = (
            f"all {len(failed)} run(s) failed (first error: {failed[0]['error']}); "
            f"the tables show them as failed, the errors are in Curves.failures{where}"
        )
    else:
        message = f"{len(failed)} run(s) failed; their errors are in Curves.failures{where}"
    warnings.warn(message, RuntimeWarning, stacklevel=4)
