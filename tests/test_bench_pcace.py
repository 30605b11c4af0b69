import json
from pathlib import Path

import pytest

from xai_feedback.cli import find_benchmarks, load_benchmark

pytest.importorskip("ace.ace")


def test_bench_pcace_synthetic_part(tmp_path: Path) -> None:
    pcace = load_benchmark("pcace", find_benchmarks(Path(__file__).parent))
    code = pcace.main(
        [
            "--parts",
            "synthetic",
            "--problems",
            "3",
            "--observations",
            "40",
            "--repeats",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    payload = json.loads((tmp_path / "pcace.json").read_text())
    assert payload["synthetic"]["same_ranking"] is True
    assert payload["synthetic"]["max_abs_diff_correlation"] < 1e-6
