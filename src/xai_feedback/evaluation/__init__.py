"""Faithfulness evaluators: ROAR, KAR (retraining), ROAD, selectivity / deletion / insertion.

All rank pixels with the same kernel (:func:`xai_feedback.functional.masking.rank_mask`) that
proxy attention uses, remove exactly ``round(f * H * W)`` pixels per image, and return
:class:`Curves` (mean ± std per fraction, AUC, table, plot, JSON). A random ranking is always
part of the comparison.

Vocabulary: :data:`AttributionSource` is "a callable or a tensor giving attributions";
:data:`RETRAIN_MODES` (``"roar"``, ``"kar"``), :data:`ORDERS` (ROAD's ``"morf"``, ``"lerf"``)
and :data:`SELECTIVITY_MODES` name the modes. :class:`ROAR` and :class:`KAR` are
:class:`RetrainSweep` with one mode; :class:`SweepOptions` types their keyword arguments.
Every evaluator calls the class indices it explains and scores ``target`` (``explain(images,
target)``); a sweep's store options (``on_mismatch``, ``on_corrupt``) live on its
:class:`RunStore`. All rank pixels by attribution magnitude by default (``squared=True``).

Sweeps run on any :class:`concurrent.futures.Executor`; :func:`dask_executor` is a local dask
cluster set up for torch training (workers without ``MALLOC_TRIM_THRESHOLD_``, whose presence
makes training about 2.4x slower), and :func:`setup_dask_workers` prepares a cluster you
started. dask is optional and imported only when these are called.
"""

from xai_feedback.evaluation._types import AttributionSource, EvalFn, ExplainFn, TrainFn
from xai_feedback.evaluation.dask import (
    MALLOC_TRIM_VARIABLE,
    DaskExecutor,
    MallocTrimWarning,
    dask_executor,
    setup_dask_workers,
    worker_malloc_trim,
)
from xai_feedback.evaluation.results import Curves
from xai_feedback.evaluation.road import ORDERS, road
from xai_feedback.evaluation.roar import (
    KAR,
    RETRAIN_MODES,
    ROAR,
    MethodSpec,
    RetrainSweep,
    SweepOptions,
)
from xai_feedback.evaluation.selectivity import SELECTIVITY_MODES, selectivity
from xai_feedback.evaluation.store import RunStore, StoreError

__all__ = [
    "KAR",
    "MALLOC_TRIM_VARIABLE",
    "ORDERS",
    "RETRAIN_MODES",
    "ROAR",
    "SELECTIVITY_MODES",
    "AttributionSource",
    "Curves",
    "DaskExecutor",
    "EvalFn",
    "ExplainFn",
    "MallocTrimWarning",
    "MethodSpec",
    "RetrainSweep",
    "RunStore",
    "StoreError",
    "SweepOptions",
    "TrainFn",
    "dask_executor",
    "road",
    "selectivity",
    "setup_dask_workers",
    "worker_malloc_trim",
]
