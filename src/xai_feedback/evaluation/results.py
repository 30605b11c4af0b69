"""Curves of a faithfulness metric over removal fractions (the run store is in ``store``)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xai_feedback._io import write_json_atomic

__all__ = ["Curves"]


def _key(fraction: float) -> str:
    return f"{fraction:.6g}"


@dataclass
class Curves:
    """One metric (accuracy, true-class probability...) per method and removal fraction.

    ``values[method][fraction]`` lists one value per repeat (or per noise draw). Failed runs are
    absent; :attr:`failures` keeps their errors.

    Example:
        >>> c = Curves("roar", "test accuracy", [0.1, 0.5])
        >>> c.add("random", 0.1, 0.9); c.add("random", 0.5, 0.7); c.add("random", 0.5, 0.5)
        >>> c.mean("random"), round(c.auc("random"), 3)
        ([0.9, 0.6], 0.75)
    """

    name: str
    metric: str
    fractions: list[float]
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    failures: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """Methods with at least one value, in insertion order."""
        return list(self.values)

    @property
    def failed(self) -> int:
        """Number of failed runs."""
        return sum(len(errors) for by_f in self.failures.values() for errors in by_f.values())

    def _cell(self, method: str, fraction: float, mean: float, std: float, digits: int) -> str:
        failed = len(self.failures.get(method, {}).get(_key(fraction), []))
        value = "-" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"
        if not failed:
            return value
        return f"failed ({failed})" if value == "-" else f"{value} ({failed} failed)"

    def add(self, method: str, fraction: float, value: float) -> None:
        """Record one value."""
        self.values.setdefault(method, {}).setdefault(_key(fraction), []).append(float(value))

    def fail(self, method: str, fraction: float, error: str) -> None:
        """Record one failed run."""
        self.failures.setdefault(method, {}).setdefault(_key(fraction), []).append(error)

    def runs(self, method: str, fraction: float) -> list[float]:
        """The values of one point."""
        return self.values.get(method, {}).get(_key(fraction), [])

    def mean(self, method: str) -> list[float]:
        """Mean per fraction (NaN where no run succeeded)."""
        return [
            statistics.fmean(v) if (v := self.runs(method, f)) else math.nan for f in self.fractions
        ]

    def std(self, method: str) -> list[float]:
        """Sample standard deviation per fraction (0 for a single value)."""
        return [
            statistics.stdev(v) if len(v := self.runs(method, f)) > 1 else 0.0
            for f in self.fractions
        ]

    def auc(self, method: str) -> float:
        """Area under the mean curve by the trapezoid rule, divided by the fraction range."""
        xs, ys = self.fractions, self.mean(method)
        if len(xs) == 1:
            return ys[0]
        area = sum(
            (x1 - x0) * (y0 + y1) / 2
            for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:], strict=False)
        )
        return area / (xs[-1] - xs[0])

    def table(self, digits: int = 3) -> str:
        """Markdown table: one row per method, mean ± std per fraction, and the AUC.

        Methods whose runs failed have a row too; failed points read ``failed (n)``.
        """
        head = " | ".join(f"{f:g}" for f in self.fractions)
        lines = [
            f"| {self.name}: {self.metric} | {head} | AUC |",
            "|---" * (len(self.fractions) + 2) + "|",
        ]
        for method in dict.fromkeys([*self.values, *self.failures]):
            stats = zip(self.fractions, self.mean(method), self.std(method), strict=True)
            cells = [self._cell(method, f, m, s, digits) for f, m, s in stats]
            auc = self.auc(method)
            auc_cell = "-" if math.isnan(auc) else f"{auc:.{digits}f}"
            lines.append(f"| {method} | {' | '.join(cells)} | {auc_cell} |")
        return "\n".join(lines)

    def plot(self, ax: Any = None) -> Any:
        """Mean curves with ±1 std bands (matplotlib axes returned)."""
        from xai_feedback.viz import plot_curves

        curves: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]] = {
            m: (self.fractions, self.mean(m), self.std(m)) for m in self.methods
        }
        return plot_curves(
            curves, xlabel="fraction of pixels removed", ylabel=self.metric, title=self.name, ax=ax
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            "name": self.name,
            "metric": self.metric,
            "fractions": self.fractions,
            "values": self.values,
            "failures": self.failures,
            "auc": {m: self.auc(m) for m in self.methods},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Curves:
        """Inverse of :meth:`to_dict`."""
        return cls(
            data["name"],
            data["metric"],
            [float(f) for f in data["fractions"]],
            {m: {k: list(v) for k, v in d.items()} for m, d in data["values"].items()},
            {m: {k: list(v) for k, v in d.items()} for m, d in data.get("failures", {}).items()},
        )

    def save(self, path: str | Path) -> None:
        """Write as JSON, atomically."""
        write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Curves:
        """Read a file written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def __getattr__(name: str) -> Any:
    if name == "RunStore":  # moved to xai_feedback.evaluation.store (lazy: store imports us)
        from xai_feedback.evaluation.store import RunStore

        return RunStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
