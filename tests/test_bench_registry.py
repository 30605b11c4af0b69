"""Every benchmark is reachable from the CLI and documents its options."""

import pytest

from xai_feedback.bench import BENCHMARKS
from xai_feedback.cli import main


def test_registry_lists_every_benchmark() -> None:
    assert set(BENCHMARKS) == {"decoy", "proxy", "pcace", "roar", "attention"}


@pytest.mark.parametrize("name", ["pcace", "roar", "attention"])
def test_help_of_new_benchmarks(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", name, "--help"])
    assert exit_info.value.code == 0
    assert f"xai-feedback bench {name}" in capsys.readouterr().out


def test_unknown_method_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "roar", "--methods", "lime", "--parts", "road"])
    assert exit_info.value.code == 2
    assert "unknown method 'lime'" in capsys.readouterr().err
