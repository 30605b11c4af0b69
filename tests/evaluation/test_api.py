"""One vocabulary for modes and attribution sources; typed ROAR / KAR entries (issue 12)."""

from __future__ import annotations

import importlib
import inspect

import pytest

import xai_feedback.evaluation as evaluation
from xai_feedback.evaluation import (
    KAR,
    ORDERS,
    RETRAIN_MODES,
    ROAR,
    SELECTIVITY_MODES,
    AttributionSource,
    RetrainSweep,
)

# the package's `road` and `selectivity` are the functions: import the modules by name
road_module = importlib.import_module("xai_feedback.evaluation.road")
roar_module = importlib.import_module("xai_feedback.evaluation.roar")
selectivity_module = importlib.import_module("xai_feedback.evaluation.selectivity")


def test_mode_names_are_distinct_and_old_names_are_deprecated_aliases() -> None:
    assert RETRAIN_MODES == ("roar", "kar")
    assert ORDERS == ("morf", "lerf")
    assert SELECTIVITY_MODES == ("selectivity", "deletion", "insertion")
    with pytest.deprecated_call(match="RETRAIN_MODES"):
        assert evaluation.MODES == RETRAIN_MODES
    with pytest.deprecated_call(match="RETRAIN_MODES"):
        assert roar_module.MODES == RETRAIN_MODES
    with pytest.deprecated_call(match="SELECTIVITY_MODES"):
        assert selectivity_module.MODES == SELECTIVITY_MODES
    with pytest.deprecated_call(match="AttributionSource"):
        assert road_module.Attributions == AttributionSource
    with pytest.deprecated_call(match="ExplainFn"):
        assert roar_module.Explainer is evaluation.ExplainFn
    with pytest.raises(AttributeError):
        evaluation.NOT_A_NAME  # noqa: B018


@pytest.mark.parametrize("entry", [ROAR, KAR])
def test_roar_and_kar_take_the_sweep_keywords_explicitly(entry: object) -> None:
    params = inspect.signature(entry).parameters  # type: ignore[arg-type]
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    sweep = set(inspect.signature(RetrainSweep).parameters) - {"modes"}
    assert set(params) == sweep
    for name, p in params.items():
        assert p.default == inspect.signature(RetrainSweep).parameters[name].default
    with pytest.raises(TypeError, match="modes"):
        entry(lambda d, g: None, {}, modes=("kar",))  # type: ignore[operator]
