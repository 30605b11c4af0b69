"""One vocabulary for modes and attribution sources; typed ROAR / KAR entries (issue 12)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

import xai_feedback.evaluation as evaluation
from xai_feedback.errors import DTypeError
from xai_feedback.evaluation import (
    KAR,
    ORDERS,
    RETRAIN_MODES,
    ROAR,
    SELECTIVITY_MODES,
    RetrainSweep,
    RunStore,
    SweepOptions,
)
from xai_feedback.evaluation.fingerprint import Fingerprint

# the package's `road` and `selectivity` are the functions: import the modules by name
road_module = importlib.import_module("xai_feedback.evaluation.road")
roar_module = importlib.import_module("xai_feedback.evaluation.roar")
selectivity_module = importlib.import_module("xai_feedback.evaluation.selectivity")
store_module = importlib.import_module("xai_feedback.evaluation.store")
types_module = importlib.import_module("xai_feedback.evaluation._types")


def test_mode_names_are_distinct_and_old_names_are_gone() -> None:
    assert RETRAIN_MODES == ("roar", "kar")
    assert ORDERS == ("morf", "lerf")
    assert SELECTIVITY_MODES == ("selectivity", "deletion", "insertion")
    gone = [
        (evaluation, "MODES"),
        (roar_module, "MODES"),
        (roar_module, "Explainer"),
        (selectivity_module, "MODES"),
        (road_module, "Attributions"),
        (types_module, "deprecated_alias"),
    ]
    for module, name in gone:
        assert name not in vars(module), (module.__name__, name)
    assert "Fingerprint" not in store_module.__all__  # it lives in evaluation.fingerprint
    with pytest.raises(AttributeError):
        evaluation.MODES  # type: ignore[attr-defined]  # noqa: B018
    assert Fingerprint.__module__ == "xai_feedback.evaluation.fingerprint"


@pytest.mark.parametrize(("entry", "mode"), [(ROAR, "roar"), (KAR, "kar")])
def test_roar_and_kar_are_one_mode_sweeps_taking_the_sweep_options(
    entry: type[RetrainSweep], mode: str
) -> None:
    assert issubclass(entry, RetrainSweep)
    sweep_params = inspect.signature(RetrainSweep).parameters
    # SweepOptions names every keyword of RetrainSweep but `modes`, nothing more
    assert set(SweepOptions.__annotations__) == set(sweep_params) - {
        "train_fn",
        "methods",
        "modes",
    }
    # and ROAR / KAR forward them: defaults are RetrainSweep's, settings reach the sweep
    default = entry(lambda d, g: None, {})  # type: ignore[arg-type, return-value]
    plain = RetrainSweep(lambda d, g: None, {}, modes=(mode,))  # type: ignore[arg-type, return-value]
    assert default.modes == (mode,)
    for name in SweepOptions.__annotations__:
        if name not in ("eval_fn", "store", "executor"):
            assert getattr(default, name) == getattr(plain, name), name
    custom = entry(
        lambda d, g: None,  # type: ignore[arg-type, return-value]
        {},
        fractions=[0.2],
        repeats=1,
        squared=False,
        fill="zero",
        seed=4,
    )
    assert (custom.fractions, custom.repeats, custom.squared, custom.fill, custom.seed) == (
        [0.2],
        1,
        False,
        "zero",
        4,
    )
    with pytest.raises(TypeError, match="modes"):
        entry(lambda d, g: None, {}, modes=("kar",))  # type: ignore[arg-type, call-arg, return-value]


def test_store_takes_a_path_or_a_run_store_with_its_own_options(tmp_path: Path) -> None:
    by_path = RetrainSweep(lambda d, g: None, {}, store=tmp_path / "a")  # type: ignore[arg-type, return-value]
    assert isinstance(by_path.store, RunStore)
    assert by_path.store.root == tmp_path / "a"
    assert (by_path.store.on_mismatch, by_path.store.on_corrupt) == ("raise", "recompute")
    store = RunStore(tmp_path / "b", on_mismatch="recompute", on_corrupt="raise")
    assert ROAR(lambda d, g: None, {}, store=store).store is store  # type: ignore[arg-type, return-value]
    assert RetrainSweep(lambda d, g: None, {}).store is None  # type: ignore[arg-type, return-value]
    params = inspect.signature(RetrainSweep).parameters
    assert "on_mismatch" not in params and "on_corrupt" not in params
    with pytest.raises(DTypeError, match="`store` must be a path, a RunStore or None, got int"):
        RetrainSweep(lambda d, g: None, {}, store=3)  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize("evaluator", ["road", "selectivity"])
def test_class_indices_are_called_target_and_ranking_is_by_magnitude(evaluator: str) -> None:
    fn = getattr(evaluation, evaluator)
    params = inspect.signature(fn).parameters
    assert list(params)[:4] == ["model", "images", "target", "methods"]
    # one default across the evaluators: rank by magnitude
    assert params["squared"].default is True
    assert inspect.signature(RetrainSweep).parameters["squared"].default is True
