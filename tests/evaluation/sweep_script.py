"""A small KAR sweep into a store, run as a separate process by the fault tests.

``python -m tests.evaluation.sweep_script STORE OUT [HANG_AT]`` writes the curves to ``OUT``
(JSON). With ``HANG_AT=n`` the n-th run record's rename never happens: the process touches
``$SWEEP_HANGING`` and hangs in the middle of writing it (the test then kills it).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

FRACTIONS = (0.25, 0.5)
REPEATS = 2


def sweep_kwargs() -> dict[str, object]:
    """The settings every fault test uses (so that runs compare)."""
    return {"fractions": FRACTIONS, "repeats": REPEATS, "progress": False}


def _hang_at(n: int) -> None:
    import xai_feedback._io as io

    real = io.os.replace
    count = 0

    def replace(src: str, dst: str) -> None:
        nonlocal count
        if Path(dst).name.startswith("f"):  # a run record
            count += 1
            if count == n:
                Path(os.environ["SWEEP_HANGING"]).touch()  # tell the test: kill me now
                time.sleep(3600)
        real(src, dst)

    io.os.replace = replace  # type: ignore[assignment]


def main(argv: list[str]) -> None:
    from tests.evaluation.sweep_helpers import intensity, small_digits, train_means
    from xai_feedback.evaluation import KAR

    if len(argv) > 2:
        _hang_at(int(argv[2]))
    train, test = small_digits()
    sweep = KAR(train_means, {"intensity": intensity}, store=argv[0], **sweep_kwargs())  # type: ignore[arg-type]
    curves = sweep.run(train, test)
    Path(argv[1]).write_text(json.dumps({m: c.to_dict() for m, c in curves.items()}))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1:])
