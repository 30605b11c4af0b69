"""Faithfulness evaluators: ROAR, KAR (retraining), ROAD, selectivity / deletion / insertion.

All rank pixels with the same kernel (:func:`xai_feedback.functional.masking.rank_mask`) that
proxy attention uses, remove exactly ``round(f * H * W)`` pixels per image, and return
:class:`Curves` (mean ± std per fraction, AUC, table, plot, JSON). A random ranking is always
part of the comparison.
"""

from xai_feedback.evaluation.results import Curves, RunStore
from xai_feedback.evaluation.road import ORDERS, road
from xai_feedback.evaluation.roar import KAR, MODES, ROAR, RetrainSweep
from xai_feedback.evaluation.selectivity import selectivity

__all__ = [
    "KAR",
    "MODES",
    "ORDERS",
    "ROAR",
    "Curves",
    "RetrainSweep",
    "RunStore",
    "road",
    "selectivity",
]
