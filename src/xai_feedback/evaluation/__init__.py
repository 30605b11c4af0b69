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
"""

from xai_feedback.evaluation._types import AttributionSource, EvalFn, ExplainFn, TrainFn
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
    "ORDERS",
    "RETRAIN_MODES",
    "ROAR",
    "SELECTIVITY_MODES",
    "AttributionSource",
    "Curves",
    "EvalFn",
    "ExplainFn",
    "MethodSpec",
    "RetrainSweep",
    "RunStore",
    "StoreError",
    "SweepOptions",
    "TrainFn",
    "road",
    "selectivity",
]
