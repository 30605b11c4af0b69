"""Every benchmark runs from the CLI, documents its options and lives outside the package."""

import ast
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

import pytest

import xai_feedback
from xai_feedback.cli import (
    BENCHMARKS_ENV,
    BenchmarkNotFoundError,
    find_benchmarks,
    list_benchmarks,
    load_benchmark,
    main,
)

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"decoy", "proxy", "pcace", "roar", "attention", "confounds"}
NAMES |= {"confounds_select", "confounds_levels", "confounds_mlp"}
NAMES |= {"vit_confounds"}  # issue 22
NAMES |= {"realworld"}
NAMES |= {"xil"}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BENCHMARKS_ENV, raising=False)


def test_registry_lists_every_benchmark() -> None:
    found = list_benchmarks(ROOT / "benchmarks")
    assert set(found) >= NAMES
    other_issues = {"models", "dask_sweep", "real_weights", "relevance"}
    assert set(found) - NAMES <= other_issues
    assert all(path.parent == ROOT / "benchmarks" for path in found.values())


def test_checkout_is_found_from_below_the_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT / "tests")
    assert find_benchmarks() == ROOT / "benchmarks"


def test_list_prints_every_benchmark(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["bench", "--list"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert listed >= NAMES
    assert "_common" not in listed and "_arms" not in listed  # shared modules are no benchmarks


@pytest.mark.parametrize("name", sorted(NAMES))
def test_help_of_every_benchmark(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"xai-feedback bench {name}" in out
    assert "--quick" in out and "--out" in out


def test_unknown_method_is_rejected(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "roar", "--methods", "lime", "--parts", "road"])
    assert exit_info.value.code == 2
    assert "unknown method 'lime'" in capsys.readouterr().err


def test_not_found_says_where_the_benchmarks_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_benchmarks() is None
    assert main(["bench", "decoy"]) == 2
    err = capsys.readouterr().err
    assert "cannot find the benchmarks" in err
    assert "`benchmarks/` folder of the xai-feedback repository" in err
    assert BENCHMARKS_ENV in err
    with pytest.raises(BenchmarkNotFoundError, match="benchmarks/") as info:
        load_benchmark("decoy")
    assert isinstance(info.value, FileNotFoundError)
    # a checkout of another project with a benchmarks/ folder is not ours
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\n')
    assert find_benchmarks() is None
    monkeypatch.setenv(BENCHMARKS_ENV, str(tmp_path / "missing"))
    assert main(["bench", "--list"]) == 2


def test_env_var_points_at_any_folder_and_new_files_are_picked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "xai_feedback_test_extra_bench"
    (tmp_path / f"{name}.py").write_text(
        "import _helper\n\ndef main(argv):\n    print('ran', list(argv), _helper.X)\n    return 3\n"
    )
    (tmp_path / "_helper.py").write_text("X = 7\ndef main(argv):\n    return 0\n")
    (tmp_path / "notes.py").write_text("X = 1\n")
    monkeypatch.setenv(BENCHMARKS_ENV, str(tmp_path))
    monkeypatch.setattr(sys, "path", list(sys.path))
    for module in (name, "_helper"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.chdir(tmp_path.parent)
    assert set(list_benchmarks(tmp_path)) == {name}
    try:
        assert main(["bench", name, "--flag", "1"]) == 3
        assert capsys.readouterr().out == "ran ['--flag', '1'] 7\n"
        assert main(["bench", "notes"]) == 2
        assert "unknown benchmark 'notes'" in capsys.readouterr().err
    finally:
        sys.modules.pop(name, None)
        sys.modules.pop("_helper", None)


def _imported_top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_installed_package_holds_no_benchmark_code() -> None:
    assert importlib.util.find_spec("xai_feedback.bench") is None
    package = Path(xai_feedback.__file__).parent
    modules = [m.name for m in pkgutil.walk_packages([str(package)], "xai_feedback.")]
    assert "xai_feedback.demo" in modules
    assert not [m for m in modules if m.split(".")[1] in {"bench", "benchmarks"}]
    sources = sorted(package.rglob("*.py"))
    assert len(sources) > 20
    offending = {
        str(p.relative_to(package)): sorted(_imported_top_level_names(p) & {"ace", "quantus"})
        for p in sources
    }
    assert {k: v for k, v in offending.items() if v} == {}
    # ... while the benchmarks that compare against them do import them
    assert "ace" in _imported_top_level_names(ROOT / "benchmarks" / "pcace.py")
    assert "quantus" in _imported_top_level_names(ROOT / "benchmarks" / "roar.py")


@pytest.mark.parametrize("old", ["transforms", "ranking", "experiments"])
def test_the_renamed_modules_are_gone(old: str) -> None:
    # no release was made: the 0.2 renames are recorded in CHANGELOG.md, not kept as aliases
    assert importlib.util.find_spec(f"xai_feedback.{old}") is None
