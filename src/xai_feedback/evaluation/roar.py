r"""ROAR and KAR (Hooker et al. 2019): remove pixels by attribution rank, retrain, evaluate.

For each attribution method, fraction :math:`f` and repeat :math:`r`:

- **ROAR** replaces the :math:`\mathrm{round}(f \cdot HW)` *most* relevant pixels of every
  image, **KAR** the *least* relevant ones, in the training **and** the test set, by the
  per-channel mean of the training set (or another fill);
- a fresh model is trained on the modified training set (``train_fn``) and evaluated on the
  modified test set (``eval_fn``, accuracy by default).

A method is faithful when ROAR accuracy falls faster than with a random ranking (always
included as ``"random"``, drawn anew for every repeat) and KAR accuracy falls slower.
Retraining is what separates "the model needs these pixels" from "the model was never
trained on images with holes".

Each run is one task: tasks go to any :class:`concurrent.futures.Executor` (processes, or a
dask / ray executor) or run in-process, and each finished run is written at once, atomically,
to ``store``: an interrupted sweep restarts where it stopped. A run that raises is recorded as
failed with its error, and the sweep goes on.

Reference:
    S. Hooker, D. Erhan, P.-J. Kindermans, B. Kim, "A Benchmark for Interpretability Methods
    in Deep Neural Networks", NeurIPS 2019.
"""

from __future__ import annotations

import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xai_feedback._checks import check_choice, check_fractions, check_int
from xai_feedback._io import read_json, save_tensor_atomic, write_json_atomic
from xai_feedback.data import ImageDataset
from xai_feedback.errors import DTypeError, RangeError, ShapeError
from xai_feedback.evaluation.results import Curves, RunStore
from xai_feedback.evaluation.road import Attributions, method_scores
from xai_feedback.functional.masking import REMOVALS, rank_mask, remove_pixels

__all__ = ["KAR", "MODES", "ROAR", "Explainer", "RetrainSweep", "TrainFn"]

MODES = ("roar", "kar")
"""``"roar"`` removes the most relevant pixels, ``"kar"`` the least relevant."""

Explainer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``explain(images, labels) -> attributions`` ``(B, C, H, W)`` or ``(B, H, W)``."""
TrainFn = Callable[[ImageDataset, torch.Generator], nn.Module]
"""``train_fn(data, generator) -> trained model`` (a fresh model every call)."""
EvalFn = Callable[[nn.Module, ImageDataset], float]


def _default_eval(model: nn.Module, data: ImageDataset) -> float:
    from xai_feedback.training import accuracy

    return accuracy(model, data)


@dataclass(frozen=True)
class _Task:
    mode: str
    method: str
    fraction: float
    repeat: int

    @property
    def parts(self) -> tuple[str, str, str]:
        return (self.mode, self.method, f"f{self.fraction:.6g}_r{self.repeat}")


@dataclass(frozen=True)
class _Payload:
    """Everything one run needs, picklable for process (or cluster) executors."""

    task: _Task
    train_fn: TrainFn
    eval_fn: EvalFn
    train: ImageDataset
    test: ImageDataset
    train_scores: torch.Tensor | None  # None: random ranking
    test_scores: torch.Tensor | None
    fill: str
    dataset_mean: torch.Tensor
    train_seed: int
    ranking_seed: int


def _modify(
    data: ImageDataset, scores: torch.Tensor | None, p: _Payload, g: torch.Generator
) -> ImageDataset:
    if scores is None:
        n, _, h, w = data.images.shape
        scores = torch.rand(n, h, w, generator=g)
    mask = rank_mask(scores, p.task.fraction, most_relevant=p.task.mode == "roar")
    images = remove_pixels(data.images, mask, p.fill, dataset_mean=p.dataset_mean, generator=g)
    return ImageDataset(images, data.labels, name=f"{data.name}/{p.task.mode}{p.task.fraction:g}")


def _run(p: _Payload) -> dict[str, Any]:
    """Run one (mode, method, fraction, repeat): mask, train, evaluate. Never raises."""
    start = time.perf_counter()
    try:
        g = torch.Generator().manual_seed(p.ranking_seed)
        train = _modify(p.train, p.train_scores, p, g)
        test = _modify(p.test, p.test_scores, p, g)
        model = p.train_fn(train, torch.Generator().manual_seed(p.train_seed))
        if not isinstance(model, nn.Module):
            raise DTypeError(
                f"`train_fn` must return the trained nn.Module, got {type(model).__name__}."
            )
        value = float(p.eval_fn(model, test))
        return {"status": "ok", "value": value, "seconds": time.perf_counter() - start}
    except Exception as error:  # recorded, and the sweep goes on
        return {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(),
            "seconds": time.perf_counter() - start,
        }


class RetrainSweep:
    """ROAR and/or KAR for several attribution methods, resumable and parallel.

    Args:
        train_fn: ``train_fn(data, generator) -> model``: builds and trains a *fresh* model.
            With a process executor it must be picklable (a module-level function).
        methods: ``{name: explain}`` with ``explain(images, labels) -> attributions``, or
            ``{name: (train_attributions, test_attributions)}``. Attributions are computed
            once, on the unmodified images, and cached in ``store``. ``"random"`` is added.
        eval_fn: ``eval_fn(model, data) -> float`` (default: top-1 accuracy).
        modes: ``("roar", "kar")`` or one of them.
        fractions: Fractions of pixels removed, each in (0, 1).
        repeats: Trainings per point (seeds ``seed + repeat``, shared across methods).
        fill: Replacement of removed pixels (:data:`~xai_feedback.functional.masking.REMOVALS`);
            Hooker et al.'s per-channel training-set mean by default.
        squared: Rank pixels by squared attributions (summed over channels).
        store: Directory of the run records (and cached attributions); ``None`` keeps
            nothing and cannot resume.
        executor: Runs the tasks; ``None`` runs them one after another in this process.
        progress: Show a progress bar.
        seed: Base seed of trainings and random rankings.
        retry_failed: Rerun runs recorded as failed.
        max_pending: Runs submitted to the executor ahead of time (set it to at least the
            number of workers). With a ``ProcessPoolExecutor``, prefer the ``"spawn"`` start
            method: forking a process whose torch already started its thread pool can hang.

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
        methods: Mapping[str, Explainer | tuple[torch.Tensor, torch.Tensor]],
        *,
        eval_fn: EvalFn | None = None,
        modes: Sequence[str] = MODES,
        fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
        repeats: int = 3,
        fill: str = "dataset_mean",
        squared: bool = False,
        store: str | Path | None = None,
        executor: Executor | None = None,
        progress: bool = True,
        seed: int = 0,
        retry_failed: bool = True,
        max_pending: int = 8,
    ) -> None:
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
            check_choice(mode, "modes", MODES)
        self.train_fn = train_fn
        self.eval_fn: EvalFn = eval_fn if eval_fn is not None else _default_eval
        self.methods = dict(methods)
        self.modes = tuple(modes)
        self.fractions = check_fractions(fractions)
        self.repeats = check_int(repeats, "repeats", minimum=1)
        self.fill = check_choice(fill, "fill", REMOVALS)
        self.squared = squared
        self.store = None if store is None else RunStore(store)
        self.executor = executor
        self.progress = progress
        self.seed = check_int(seed, "seed", minimum=0)
        self.retry_failed = retry_failed
        self.max_pending = check_int(max_pending, "max_pending", minimum=1)

    def _scores(self, name: str, data: ImageDataset, split: str) -> torch.Tensor:
        """Per-pixel relevance ``(N, H, W)`` of one method on one split (cached in the store)."""
        path = (
            None if self.store is None else self.store.root / "attributions" / f"{name}_{split}.pt"
        )
        if path is not None and path.exists():
            cached: torch.Tensor = torch.load(path)
            return cached
        entry = self.methods[name]
        method: Attributions
        if isinstance(entry, tuple):
            method = entry[0] if split == "train" else entry[1]
            if not isinstance(method, torch.Tensor):
                raise DTypeError(
                    f"`methods[{name!r}]` must hold tensors, got {type(method).__name__}."
                )
        else:
            method = entry
        what = f"{split} attributions"
        scores = method_scores(name, method, data.images, data.labels, self.squared, what)
        scores = scores.float().cpu()
        if path is not None:
            save_tensor_atomic(path, scores)
        return scores

    def tasks(self) -> list[_Task]:
        """Every (mode, method, fraction, repeat) of the sweep."""
        names = ["random", *self.methods]
        return [
            _Task(mode, name, f, r)
            for mode in self.modes
            for name in names
            for f in self.fractions
            for r in range(self.repeats)
        ]

    def run(self, train: ImageDataset, test: ImageDataset) -> dict[str, Curves]:
        """Run (or finish) the sweep; returns one :class:`Curves` per mode."""
        for data, name in ((train, "train"), (test, "test")):
            if not isinstance(data, ImageDataset):
                raise DTypeError(f"`{name}` must be an ImageDataset, got {type(data).__name__}.")
        if train.images.shape[1:] != test.images.shape[1:]:
            raise ShapeError(
                "`train` and `test` images must share (C, H, W), got "
                f"{tuple(train.images.shape[1:])} and {tuple(test.images.shape[1:])}."
            )
        if self.store is not None:
            self._check_manifest()
        records: dict[_Task, dict[str, Any]] = {}
        pending: list[_Task] = []
        for task in self.tasks():
            record = None if self.store is None else self.store.get(task.parts)
            if record is not None and (record["status"] == "ok" or not self.retry_failed):
                records[task] = record
            else:
                pending.append(task)
        if pending:
            self._execute(pending, train, test, records)
        return self._curves(records)

    def _check_manifest(self) -> None:
        """Refuse to mix runs made with other settings into one store."""
        assert self.store is not None
        path = self.store.root / "sweep.json"
        settings = {"fill": self.fill, "squared": self.squared, "seed": self.seed}
        stored = read_json(path)
        if stored is not None and stored != settings:
            raise RangeError(
                f"the store {self.store.root} holds runs made with {stored}, but this sweep "
                f"uses {settings}: use another `store` (or delete it)."
            )
        if stored is None:
            write_json_atomic(path, settings)

    def _payload(
        self,
        task: _Task,
        train: ImageDataset,
        test: ImageDataset,
        scores: dict[str, Any],
        mean: torch.Tensor,
    ) -> _Payload:
        train_scores, test_scores = scores.get(task.method, (None, None))
        return _Payload(
            task=task,
            train_fn=self.train_fn,
            eval_fn=self.eval_fn,
            train=train,
            test=test,
            train_scores=train_scores,
            test_scores=test_scores,
            fill=self.fill,
            dataset_mean=mean,
            train_seed=self.seed + task.repeat,
            ranking_seed=(self.seed + 1) * 100_003 + task.repeat,
        )

    def _execute(
        self,
        pending: list[_Task],
        train: ImageDataset,
        test: ImageDataset,
        records: dict[_Task, dict[str, Any]],
    ) -> None:
        from tqdm.auto import tqdm

        train, test = train.to(torch.device("cpu")), test.to(torch.device("cpu"))
        needed = {t.method for t in pending} - {"random"}
        scores = {
            n: (self._scores(n, train, "train"), self._scores(n, test, "test")) for n in needed
        }
        mean = train.images.mean(dim=(0, 2, 3))
        bar = tqdm(total=len(pending), desc="ROAR/KAR runs", disable=not self.progress)

        def finish(task: _Task, record: dict[str, Any]) -> None:
            record.update(
                mode=task.mode, method=task.method, fraction=task.fraction, repeat=task.repeat
            )
            if self.store is not None:
                self.store.put(task.parts, record)
            records[task] = record
            bar.set_postfix_str(f"{task.mode} {task.method} {task.fraction:g}")
            bar.update()

        try:
            if self.executor is None:
                for task in pending:
                    finish(task, _run(self._payload(task, train, test, scores, mean)))
            else:
                # a bounded window of submitted runs: payloads (data + attributions) are
                # pickled only shortly before a worker needs them
                queue = iter(pending)
                futures: dict[Future[dict[str, Any]], _Task] = {}

                def submit() -> None:
                    task = next(queue, None)
                    if task is not None and self.executor is not None:
                        payload = self._payload(task, train, test, scores, mean)
                        futures[self.executor.submit(_run, payload)] = task

                for _ in range(self.max_pending):
                    submit()
                try:
                    while futures:
                        done, _ = wait(futures, return_when=FIRST_COMPLETED)
                        for future in done:
                            task = futures.pop(future)
                            try:
                                record = future.result()
                            except Exception as error:  # the executor failed (a dead worker...)
                                record = {
                                    "status": "failed",
                                    "error": f"{type(error).__name__}: {error}",
                                }
                            finish(task, record)
                            submit()
                finally:
                    for future in futures:
                        future.cancel()
        finally:
            bar.close()

    def _curves(self, records: dict[_Task, dict[str, Any]]) -> dict[str, Curves]:
        metric = "test accuracy" if self.eval_fn is _default_eval else "eval_fn"
        curves = {mode: Curves(mode.upper(), metric, list(self.fractions)) for mode in self.modes}
        failed = 0
        for task in self.tasks():
            record = records.get(task)
            if record is None:
                continue
            if record["status"] == "ok":
                curves[task.mode].add(task.method, task.fraction, record["value"])
            else:
                failed += 1
                curves[task.mode].fail(task.method, task.fraction, record["error"])
        if failed:
            warnings.warn(
                f"{failed} run(s) failed; their errors are in Curves.failures"
                + (f" and under {self.store.root}" if self.store is not None else ""),
                RuntimeWarning,
                stacklevel=3,
            )
        return curves


def ROAR(train_fn: TrainFn, methods: Mapping[str, Any], **options: Any) -> RetrainSweep:  # noqa: N802
    """:class:`RetrainSweep` with ``modes=("roar",)``: remove the most relevant pixels."""
    return RetrainSweep(train_fn, methods, modes=("roar",), **options)


def KAR(train_fn: TrainFn, methods: Mapping[str, Any], **options: Any) -> RetrainSweep:  # noqa: N802
    """:class:`RetrainSweep` with ``modes=("kar",)``: remove the least relevant pixels."""
    return RetrainSweep(train_fn, methods, modes=("kar",), **options)
