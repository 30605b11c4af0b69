"""Write the fuzz tally (``tests.fuzz.strategies.COUNTS``) to the file ``XAI_FUZZ_COUNTS`` names."""

from __future__ import annotations

import json
import os

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("XAI_FUZZ_COUNTS")
    if not path:
        return
    from tests.fuzz.strategies import COUNTS

    rows = [[area, label, result, count] for (area, label, result), count in sorted(COUNTS.items())]
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"exitstatus": int(exitstatus), "rows": rows}, handle, indent=1)
