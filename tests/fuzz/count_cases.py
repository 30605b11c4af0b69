"""Run the fuzz suite once and print how many generated cases passed, per area and input class.

Usage (from the repository root)::

    PYTHONPATH=src python tests/fuzz/count_cases.py          # a plain table
    PYTHONPATH=src python tests/fuzz/count_cases.py --rst    # the table of docs/bad_inputs.rst

A case is counted when its property held: the call returned a checked result ("result"), or
raised the library error the property expected (the error's class). Hypothesis also runs
shrinking and replays; the counts are of the cases the properties saw. The settings are
derandomized, so the counts are the same on every run of the same code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> int:
    rst = "--rst" in argv
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "counts.json"
        env = dict(os.environ, XAI_FUZZ_COUNTS=str(out), OMP_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH")])
        )
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "tests/fuzz",
        ]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        if not out.exists():
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
            return 1
        data = json.loads(out.read_text())
    table: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for area, label, result, count in data["rows"]:
        table[(area, label)][result] = count
    total = sum(sum(v.values()) for v in table.values())
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if rst:
        rows = [
            (
                area,
                label,
                ", ".join(f"{k} {v}" for k, v in sorted(results.items())),
                str(sum(results.values())),
            )
            for (area, label), results in sorted(table.items())
        ]
        header = ("Area", "Input class", "Outcomes (passed cases)", "Cases")
        widths = [max(len(r[i]) for r in [*rows, header]) for i in range(4)]
        rule = "  ".join("=" * w for w in widths)
        print(rule)
        print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)))
        print(rule)
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)))
        print(rule)
    else:
        for (area, label), results in sorted(table.items()):
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(results.items()))
            print(f"{area:20s} {label:34s} {outcomes}")
    print(f"\n{total} generated cases passed; pytest: {summary}")
    return 0 if data["exitstatus"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
