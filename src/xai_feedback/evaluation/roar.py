r"""ROAR and KAR (Hooker et al. 2019): remove pixels by attribution rank, retrain, evaluate.

For each attribution method, fraction :math:`f` and repeat :math:`r`:

- **ROAR** replaces the :math:`\mathrm{round}(f \cdot HW)` *most* relevant pixels of every
  image, **KAR** the *least* relevant ones, in the training **and** the test set, by ROAD's
  noisy linear imputation from the kept pixels (default; Hooker et al. used the per-channel
  mean of the training set, ``fill="dataset_mean"``, which leaks the removed pixels'
  silhouette), ranking pixels by the magnitude of their attribution (``squared=True``);
- a fresh model is trained on the modified training set (``train_fn``) and evaluated on the
  modified test set (``eval_fn``, accuracy by default).

A method is faithful when ROAR accuracy falls faster than with a random ranking (always
included as ``"random"``, drawn anew for every repeat) and KAR accuracy falls slower.
Retraining is what separates "the model needs these pixels" from "the model was never
trained on images with holes".

Each run is one task: tasks go to any :class:`concurrent.futures.Executor` (processes, or a
dask / ray executor) or run in-process, and each finished run is written at once, atomically,
to ``store``: an interrupted sweep restarts where it stopped. A run that raises is recorded as
failed with its error and traceback, the sweep goes on, and a resumed sweep retries it. Each
record carries the fingerprint of everything that determines it (data, explainer, training and
evaluation code, settings, library version); a record made from other inputs is never reused
(:mod:`xai_feedback.evaluation.store` has the rules).

Reference:
    S. Hooker, D. Erhan, P.-J. Kindermans, B. Kim, "A Benchmark for Interpretability Methods
    in Deep Neural Networks", NeurIPS 2019.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeAlias

import torch

import xai_feedback
from xai_feedback._checks import check_choice, check_fractions, check_int, check_nonempty
from xai_feedback._progress import progress_bar
from xai_feedback.data import ImageDataset
from xai_feedback.errors import DTypeError, RangeError, ShapeError
from xai_feedback.evaluation._dispatch import dispatch
from xai_feedback.evaluation._retrain import Payload, Record, Task, run_task
from xai_feedback.evaluation._scores import method_scores
from xai_feedback.evaluation._types import (
    AttributionSource,
    EvalFn,
    ExplainFn,
    TrainFn,
    deprecated_alias,
)
from xai_feedback.evaluation.fingerprint import identity, tensor_digest
from xai_feedback.evaluation.results import Curves
from xai_feedback.evaluation.store import Fingerprint, OnCorrupt, OnMismatch, RunStore
from xai_feedback.functional.masking import REMOVALS

__all__ = ["KAR", "RETRAIN_MODES", "ROAR", "MethodSpec", "RetrainSweep", "TrainFn"]

RETRAIN_MODES = ("roar", "kar")
"""``"roar"`` removes the most relevant pixels, ``"kar"`` the least relevant."""

MethodSpec: TypeAlias = AttributionSource | tuple[torch.Tensor, torch.Tensor]
"""A sweep's method: an :data:`~xai_feedback.evaluation.AttributionSource` (explainer called
on each split, or one tensor for both splits of equal size) or ``(train, test)`` attributions."""


def __getattr__(name: str) -> Any:
    aliases = {"MODES": ("RETRAIN_MODES", RETRAIN_MODES), "Explainer": ("ExplainFn", ExplainFn)}
    return deprecated_alias(__name__, name, aliases)


def _default_eval(model: torch.nn.Module, data: ImageDataset) -> float:
    from xai_feedback.training import accuracy

    return accuracy(model, data)


def _check_callables(train_fn: Any, methods: Any, modes: Sequence[str]) -> None:
    if not callable(train_fn):
        raise DTypeError(f"`train_fn` must be callable, got {type(train_fn).__name__}.")
    if not isinstance(methods, Mapping):
        raise DTypeError(
            f"`methods` must be a mapping name -> explainer, got {type(methods).__name__}."
        )
    if "random" in methods:
        raise RangeError(
            "`methods` must not contain 'random': the random baseline is always added."
        )
    for mode in modes:
        check_choice(mode, "modes", RETRAIN_MODES)


def _check_data(train: Any, test: Any) -> None:
    for data, name in ((train, "train"), (test, "test")):
        if not isinstance(data, ImageDataset):
            raise DTypeError(f"`{name}` must be an ImageDataset, got {type(data).__name__}.")
    check_nonempty(train.images, "train", "dataset")
    check_nonempty(test.images, "test", "dataset")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise ShapeError(
            "`train` and `test` images must share (C, H, W), got "
            f"{tuple(train.images.shape[1:])} and {tuple(test.images.shape[1:])}."
        )


def _split_source(name: str, entry: MethodSpec, split: str) -> AttributionSource:
    if not isinstance(entry, tuple):
        return entry
    source = entry[0] if split == "train" else entry[1]
    if not isinstance(source, torch.Tensor):
        raise DTypeError(f"`methods[{name!r}]` must hold tensors, got {type(source).__name__}.")
    return source


def _data_identity(data: ImageDataset, dataset_id: str | None, split: str) -> dict[str, Any]:
    """What identifies one split: its tensors' hashes, or the user's id (then not hashed)."""
    shape = list(data.images.shape)
    if dataset_id is not None:
        return {"id": f"{dataset_id}/{split}", "shape": shape}
    masks = None if data.masks is None else tensor_digest(data.masks)
    images, labels = tensor_digest(data.images), tensor_digest(data.labels)
    return {"images": images, "labels": labels, "masks": masks, "shape": shape}


class RetrainSweep:
    """ROAR and/or KAR for several attribution methods, resumable and parallel.

    Args:
        train_fn: ``train_fn(data, generator) -> model``: builds and trains a *fresh* model.
            With a process executor it must be picklable (a module-level function). ``data``
            keeps the labels and the masks of the original data.
        methods: ``{name: explain}`` with ``explain(images, labels) -> attributions``, or
            ``{name: (train_attributions, test_attributions)}``. Attributions are computed
            once, on the unmodified images, and cached in ``store``. ``"random"`` is added.
        eval_fn: ``eval_fn(model, data) -> float`` (default: top-1 accuracy).
        modes: :data:`RETRAIN_MODES` (``("roar", "kar")``) or one of them.
        fractions: Fractions of pixels removed, each in (0, 1).
        repeats: Trainings per point (seeds ``seed + repeat``, shared across methods).
        fill: Replacement of removed pixels (:data:`~xai_feedback.functional.masking.REMOVALS`).
            Default: ROAD's noisy linear imputation, which does not paint the removed
            pixels' silhouette; Hooker et al.'s per-channel training-set mean is
            ``"dataset_mean"`` (it leaks the mask's shape: ``docs/faithfulness.rst``).
        squared: Rank pixels by squared attributions, i.e. by magnitude (summed over
            channels; default). With ``False`` a signed method's *least* relevant pixels are
            its most negative ones, often on the object (signed integrated gradients kept
            0.969 accuracy at 90 % removed, random 0.775).
        store: Directory of the run records (and cached attributions); ``None`` keeps
            nothing and cannot resume.
        executor: Runs the tasks; ``None`` runs them one after another in this process.
        progress: Show a progress bar.
        seed: Base seed of trainings and random rankings.
        retry_failed: Rerun runs recorded as failed.
        max_pending: Runs submitted to the executor ahead of time (set it to at least the
            number of workers). With a ``ProcessPoolExecutor``, prefer the ``"spawn"`` start
            method: forking a process whose torch already started its thread pool can hang.
        train_config: JSON-ready description of the training (model factory, epochs,
            version...), part of every record's fingerprint: change it when ``train_fn``
            changes in a way its code does not show.
        method_config: ``{name: config}`` likewise for the explainers.
        dataset_id: Identify the data by this id instead of hashing its tensors.
        on_mismatch: A stored record made from other inputs: ``"raise"`` a
            :class:`~xai_feedback.evaluation.StoreError`, or ``"recompute"`` it.
        on_corrupt: A stored record that cannot be read: ``"recompute"`` it (the file is
            kept under ``<store>/_corrupt/``) or ``"raise"``.

    Example:
        >>> from xai_feedback.data import load_digits
        >>> from xai_feedback.models import GAPNet
        >>> from xai_feedback.training import fit
        >>> def train_fn(data, generator):
        ...     model = GAPNet(width=2, generator=generator)
        ...     fit(model, data, epochs=1, generator=generator)
        ...     return model
        >>> train = load_digits("train").subset(torch.arange(64))
        >>> test = load_digits("test").subset(torch.arange(32))
        >>> intensity = {"intensity": lambda images, labels: images}
        >>> sweep = RetrainSweep(train_fn, intensity, fractions=[0.5], repeats=1, progress=False)
        >>> curves = sweep.run(train, test)
        >>> curves["roar"].methods, len(curves["kar"].runs("intensity", 0.5))
        (['random', 'intensity'], 1)
    """

    def __init__(
        self,
        train_fn: TrainFn,
        methods: Mapping[str, MethodSpec],
        *,
        eval_fn: EvalFn | None = None,
        modes: Sequence[str] = RETRAIN_MODES,
        fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
        repeats: int = 3,
        fill: str = "noisy_linear",
        squared: bool = True,
        store: str | Path | None = None,
        executor: Executor | None = None,
        progress: bool = True,
        seed: int = 0,
        retry_failed: bool = True,
        max_pending: int = 8,
        train_config: Any = None,
        method_config: Mapping[str, Any] | None = None,
        dataset_id: str | None = None,
        on_mismatch: OnMismatch = "raise",
        on_corrupt: OnCorrupt = "recompute",
    ) -> None:
        _check_callables(train_fn, methods, modes)
        self.train_fn = train_fn
        self.eval_fn: EvalFn = eval_fn if eval_fn is not None else _default_eval
        self.methods = dict(methods)
        self.modes = tuple(modes)
        self.fractions = check_fractions(fractions)
        self.repeats = check_int(repeats, "repeats", minimum=1)
        self.fill = check_choice(fill, "fill", REMOVALS)
        self.squared = squared
        self.store = None
        if store is not None:
            self.store = RunStore(store, on_mismatch=on_mismatch, on_corrupt=on_corrupt)
        self.executor = executor
        self.progress = progress
        self.seed = check_int(seed, "seed", minimum=0)
        self.retry_failed = retry_failed
        self.max_pending = check_int(max_pending, "max_pending", minimum=1)
        self.train_config = train_config
        self.method_config = dict(method_config or {})
        self.dataset_id = dataset_id

    def tasks(self) -> list[Task]:
        """Every (mode, method, fraction, repeat) of the sweep."""
        names = ["random", *self.methods]
        return [
            Task(mode, name, f, r)
            for mode in self.modes
            for name in names
            for f in self.fractions
            for r in range(self.repeats)
        ]

    def run(self, train: ImageDataset, test: ImageDataset) -> dict[str, Curves]:
        """Run (or finish) the sweep; returns one :class:`Curves` per mode."""
        _check_data(train, test)
        base = self._base_identity(train, test)
        records, pending = self._finished(base)
        if pending:
            self._execute(pending, train, test, records, base)
        return self._curves(records)

    # -- fingerprints --------------------------------------------------------------------
    def _base_identity(self, train: ImageDataset, test: ImageDataset) -> dict[str, Any]:
        """What every record of this sweep depends on, whatever its task."""
        return {
            "library": xai_feedback.__version__,
            "data": {
                "train": _data_identity(train, self.dataset_id, "train"),
                "test": _data_identity(test, self.dataset_id, "test"),
            },
            "train_fn": identity(self.train_fn),
            "train_config": identity(self.train_config),
            "eval_fn": identity(self.eval_fn),
            "fill": self.fill,
            "squared": self.squared,
        }

    def _method_identity(self, name: str) -> Any:
        if name == "random":
            return "random"
        return {
            "source": identity(self.methods[name]),
            "config": identity(self.method_config.get(name)),
        }

    def _key(self, task: Task, base: dict[str, Any]) -> Fingerprint:
        """Fingerprint of one run: the sweep's inputs, its method, fraction and seeds."""
        train_seed, ranking_seed = self._seeds(task)
        return Fingerprint.of(
            {
                **base,
                "mode": task.mode,
                "method": self._method_identity(task.method),
                "fraction": task.fraction,
                "seeds": [train_seed, ranking_seed],
            }
        )

    def _seeds(self, task: Task) -> tuple[int, int]:
        return self.seed + task.repeat, (self.seed + 1) * 100_003 + task.repeat

    # -- store ---------------------------------------------------------------------------
    def _finished(self, base: dict[str, Any]) -> tuple[dict[Task, Record], list[Task]]:
        """Records the store already holds for this sweep, and the tasks still to run."""
        records: dict[Task, Record] = {}
        if self.store is None:
            return records, self.tasks()
        self.store.clean_temporary()
        self.store.check_settings({"fill": self.fill, "squared": self.squared, "seed": self.seed})
        pending = []
        for task in self.tasks():
            record = self.store.get(task.parts, self._key(task, base))
            if record is not None and (record["status"] == "ok" or not self.retry_failed):
                records[task] = record
            else:
                pending.append(task)
        return records, pending

    def _scores(self, name: str, data: ImageDataset, split: str, base: dict[str, Any]) -> Any:
        """Per-pixel relevance ``(N, H, W)`` of one method on one split (cached in the store)."""
        key = Fingerprint.of(
            {
                "library": base["library"],
                "data": base["data"][split],
                "method": self._method_identity(name),
                "squared": self.squared,
            }
        )
        parts = ("attributions", name, split)
        cached = None if self.store is None else self.store.get_tensor(parts, key)
        if cached is not None:
            return cached
        source = _split_source(name, self.methods[name], split)
        what = f"{split} attributions"
        scores = method_scores(name, source, data.images, data.labels, self.squared, what)
        scores = scores.float().cpu()
        if self.store is not None:
            self.store.put_tensor(parts, scores, key)
        return scores

    # -- running -------------------------------------------------------------------------
    def _payload(
        self,
        task: Task,
        data: tuple[ImageDataset, ImageDataset],
        scores: dict[str, Any],
        mean: torch.Tensor,
    ) -> Callable[[], Record]:
        train_scores, test_scores = scores.get(task.method, (None, None))
        train_seed, ranking_seed = self._seeds(task)
        payload = Payload(
            task=task,
            train_fn=self.train_fn,
            eval_fn=self.eval_fn,
            train=data[0],
            test=data[1],
            train_scores=train_scores,
            test_scores=test_scores,
            fill=self.fill,
            dataset_mean=mean,
            train_seed=train_seed,
            ranking_seed=ranking_seed,
        )
        return functools.partial(run_task, payload)

    def _execute(
        self,
        pending: list[Task],
        train: ImageDataset,
        test: ImageDataset,
        records: dict[Task, Record],
        base: dict[str, Any],
    ) -> None:
        cpu = torch.device("cpu")
        data = (train.to(cpu), test.to(cpu))
        needed = [n for n in self.methods if n in {t.method for t in pending}]
        scores = {
            n: (self._scores(n, data[0], "train", base), self._scores(n, data[1], "test", base))
            for n in needed
        }
        mean = data[0].images.mean(dim=(0, 2, 3))
        bar = progress_bar(total=len(pending), desc="ROAR/KAR runs", enabled=self.progress)

        def finish(task: Task, record: Record) -> None:
            record.update(
                mode=task.mode, method=task.method, fraction=task.fraction, repeat=task.repeat
            )
            if self.store is not None:
                record = self.store.put(task.parts, record, self._key(task, base))
            records[task] = record
            bar.set_postfix_str(f"{task.mode} {task.method} {task.fraction:g}")
            bar.update()

        try:
            make = functools.partial(self._payload, data=data, scores=scores, mean=mean)
            dispatch(pending, make, finish, self.executor, self.max_pending)
        finally:
            bar.close()

    def _curves(self, records: dict[Task, Record]) -> dict[str, Curves]:
        metric = "test accuracy" if self.eval_fn is _default_eval else "eval_fn"
        curves = {mode: Curves(mode.upper(), metric, list(self.fractions)) for mode in self.modes}
        for task in self.tasks():
            record = records.get(task)
            if record is None:
                continue
            if record["status"] == "ok":
                curves[task.mode].add(task.method, task.fraction, record["value"])
            else:
                curves[task.mode].fail(task.method, task.fraction, record["error"])
        self._warn_failures(curves, records)
        return curves

    def _warn_failures(self, curves: dict[str, Curves], records: dict[Task, Record]) -> None:
        failed = [r for r in records.values() if r["status"] != "ok"]
        if not failed:
            return
        where = f" and under {self.store.root}" if self.store is not None else ""
        if len(failed) == len(records):
            message = (
                f"all {len(failed)} run(s) failed (first error: {failed[0]['error']}); "
                f"the tables show them as failed, the errors are in Curves.failures{where}"
            )
        else:
            message = f"{len(failed)} run(s) failed; their errors are in Curves.failures{where}"
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def ROAR(  # noqa: N802
    train_fn: TrainFn,
    methods: Mapping[str, MethodSpec],
    *,
    eval_fn: EvalFn | None = None,
    fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    repeats: int = 3,
    fill: str = "noisy_linear",
    squared: bool = True,
    store: str | Path | None = None,
    executor: Executor | None = None,
    progress: bool = True,
    seed: int = 0,
    retry_failed: bool = True,
    max_pending: int = 8,
    train_config: Any = None,
    method_config: Mapping[str, Any] | None = None,
    dataset_id: str | None = None,
    on_mismatch: OnMismatch = "raise",
    on_corrupt: OnCorrupt = "recompute",
) -> RetrainSweep:
    """:class:`RetrainSweep` with ``modes=("roar",)``: remove the most relevant pixels.

    Takes every keyword argument of :class:`RetrainSweep` except ``modes``.
    """
    return RetrainSweep(
        train_fn,
        methods,
        modes=("roar",),
        eval_fn=eval_fn,
        fractions=fractions,
        repeats=repeats,
        fill=fill,
        squared=squared,
        store=store,
        executor=executor,
        progress=progress,
        seed=seed,
        retry_failed=retry_failed,
        max_pending=max_pending,
        train_config=train_config,
        method_config=method_config,
        dataset_id=dataset_id,
        on_mismatch=on_mismatch,
        on_corrupt=on_corrupt,
    )


def KAR(  # noqa: N802
    train_fn: TrainFn,
    methods: Mapping[str, MethodSpec],
    *,
    eval_fn: EvalFn | None = None,
    fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    repeats: int = 3,
    fill: str = "noisy_linear",
    squared: bool = True,
    store: str | Path | None = None,
    executor: Executor | None = None,
    progress: bool = True,
    seed: int = 0,
    retry_failed: bool = True,
    max_pending: int = 8,
    train_config: Any = None,
    method_config: Mapping[str, Any] | None = None,
    dataset_id: str | None = None,
    on_mismatch: OnMismatch = "raise",
    on_corrupt: OnCorrupt = "recompute",
) -> RetrainSweep:
    """:class:`RetrainSweep` with ``modes=("kar",)``: remove the least relevant pixels.

    Takes every keyword argument of :class:`RetrainSweep` except ``modes``.
    """
    return RetrainSweep(
        train_fn,
        methods,
        modes=("kar",),
        eval_fn=eval_fn,
        fractions=fractions,
        repeats=repeats,
        fill=fill,
        squared=squared,
        store=store,
        executor=executor,
        progress=progress,
        seed=seed,
        retry_failed=retry_failed,
        max_pending=max_pending,
        train_config=train_config,
        method_config=method_config,
        dataset_id=dataset_id,
        on_mismatch=on_mismatch,
        on_corrupt=on_corrupt,
    )
