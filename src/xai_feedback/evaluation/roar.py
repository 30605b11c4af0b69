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
to ``store`` (a :class:`~xai_feedback.evaluation.RunStore`): an interrupted sweep restarts
where it stopped. A run that raises is recorded as
failed with its error and traceback, the sweep goes on, and a resumed sweep retries it. Each
record carries the fingerprint of everything that determines it (data, explainer, training and
evaluation code, settings, library version); a record made from other inputs is never reused
(:mod:`xai_feedback.evaluation.store` has the rules).

Reference:
    S. Hooker, D. Erhan, P.-J. Kindermans, B. Kim, "A Benchmark for Interpretability Methods
    in Deep Neural Networks", NeurIPS 2019.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

import torch

from xai_feedback._checks import check_choice, check_fractions, check_int, check_nonempty
from xai_feedback.data import ImageDataset
from xai_feedback.errors import DTypeError, RangeError, ShapeError
from xai_feedback.evaluation._retrain import Task
from xai_feedback.evaluation._sweep import SweepPass
from xai_feedback.evaluation._types import EvalFn, MethodSpec, TrainFn
from xai_feedback.evaluation.results import Curves
from xai_feedback.evaluation.store import RunStore
from xai_feedback.functional.masking import REMOVALS

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["KAR", "RETRAIN_MODES", "ROAR", "MethodSpec", "RetrainSweep", "SweepOptions", "TrainFn"]

RETRAIN_MODES = ("roar", "kar")
"""``"roar"`` removes the most relevant pixels, ``"kar"`` the least relevant."""


class SweepOptions(TypedDict, total=False):
    """The keyword arguments of :class:`RetrainSweep` but ``modes``: the options of ROAR and KAR.

    :class:`ROAR` and :class:`KAR` take them as ``**options``; their meaning and defaults are
    documented in :class:`RetrainSweep`.
    """

    eval_fn: EvalFn | None
    fractions: Sequence[float]
    repeats: int
    fill: str
    squared: bool
    store: str | os.PathLike[str] | RunStore | None
    executor: Executor | None
    progress: bool
    seed: int
    retry_failed: bool
    max_pending: int
    train_config: Any
    method_config: Mapping[str, Any] | None
    dataset_id: str | None


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


def _as_store(store: Any) -> RunStore | None:
    """``store`` as a :class:`RunStore`: a path gets the default options."""
    if store is None or isinstance(store, RunStore):
        return store
    if isinstance(store, str | os.PathLike):
        return RunStore(store)
    raise DTypeError(f"`store` must be a path, a RunStore or None, got {type(store).__name__}.")


class RetrainSweep:
    """ROAR and/or KAR for several attribution methods, resumable and parallel.

    Args:
        train_fn: ``train_fn(data, generator) -> model``: builds and trains a *fresh* model.
            With a process executor it must be picklable (a module-level function). ``data``
            keeps the labels and the masks of the original data.
        methods: ``{name: explain}`` with ``explain(images, target) -> attributions``
            (``target``: the data's labels), or
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
        squared: Rank pixels by the magnitude of their attribution (squares summed over
            channels; default, as in :func:`~xai_feedback.evaluation.road` and
            :func:`~xai_feedback.evaluation.selectivity`). With ``False`` a signed method's
            *least* relevant pixels are its most negative ones, often on the object (signed
            integrated gradients kept 0.969 accuracy at 90 % removed, random 0.775).
        store: Where the run records (and cached attributions) go: a
            :class:`~xai_feedback.evaluation.RunStore`, whose ``on_mismatch`` and
            ``on_corrupt`` say what to do with a record made from other inputs or that
            cannot be read, or a directory (a ``RunStore`` with its defaults: raise on a
            mismatch, set a corrupt record aside and recompute it); ``None`` keeps nothing
            and cannot resume.
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
        >>> intensity = {"intensity": lambda images, target: images}
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
        store: str | os.PathLike[str] | RunStore | None = None,
        executor: Executor | None = None,
        progress: bool = True,
        seed: int = 0,
        retry_failed: bool = True,
        max_pending: int = 8,
        train_config: Any = None,
        method_config: Mapping[str, Any] | None = None,
        dataset_id: str | None = None,
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
        self.store = _as_store(store)
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
        sweep_pass = SweepPass(self, train, test)
        pending = sweep_pass.resume()
        if pending:
            sweep_pass.execute(pending)
        metric = "test accuracy" if self.eval_fn is _default_eval else "eval_fn"
        return sweep_pass.curves(metric)


class _OneMode(RetrainSweep):
    """A :class:`RetrainSweep` of the one mode ``_mode``; the other arguments as there."""

    _mode: ClassVar[str]

    def __init__(
        self, train_fn: TrainFn, methods: Mapping[str, MethodSpec], **options: Unpack[SweepOptions]
    ) -> None:
        super().__init__(train_fn, methods, modes=(self._mode,), **options)


class ROAR(_OneMode):
    """ROAR alone: a :class:`RetrainSweep` with ``modes=("roar",)`` (most relevant removed).

    Takes ``train_fn``, ``methods`` and any other keyword argument of :class:`RetrainSweep`
    but ``modes`` (``**options``, :class:`SweepOptions`), with the same meaning and defaults.

    Example:
        >>> from xai_feedback.models import GAPNet
        >>> sweep = ROAR(lambda data, g: GAPNet(width=2, generator=g), {}, fractions=[0.5])
        >>> isinstance(sweep, RetrainSweep), sweep.modes, sweep.squared
        (True, ('roar',), True)
    """

    _mode = "roar"


class KAR(_OneMode):
    """KAR alone: a :class:`RetrainSweep` with ``modes=("kar",)`` (least relevant removed).

    Takes the arguments of :class:`ROAR`.

    Example:
        >>> from xai_feedback.models import GAPNet
        >>> sweep = KAR(lambda data, g: GAPNet(width=2, generator=g), {}, fractions=[0.5])
        >>> sweep.modes, sweep.fractions
        (('kar',), [0.5])
    """

    _mode = "kar"
