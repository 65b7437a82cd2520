"""What :func:`lowbit.auto` found: every model it tried, the Pareto front, and the one it chose.

A candidate *dominates* another when it is no worse on all three of metric (higher is better),
size and latency (lower is better) and strictly better on one; the Pareto front is the set of
candidates nothing dominates: the choices worth considering, whatever the trade-off.

>>> a = Candidate("a", 0.9, 100, 4.0, 1.0, True)
>>> b = Candidate("b", 0.8, 200, 8.0, 1.0, True)     # worse and bigger: dominated by a
>>> [c.name for c in pareto_front([a, b])]
['a']
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lowbit.analysis.report import SensitivityReport
from lowbit.config import QuantConfig
from lowbit.measure.table import format_table

__all__ = ["Candidate", "AutoResult", "pareto_front"]


@dataclass(frozen=True)
class Candidate:
    """One evaluated model: its metric, artifact size in bytes, median latency (ms, one
    calibration batch), stored bits per weight over the analysed layers (float ones at 32), and
    whether it meets ``metric >= baseline - max_drop``."""

    name: str
    metric: float
    size_bytes: int
    bits_per_weight: float
    latency_ms: float
    meets: bool
    config: QuantConfig | None = None
    choice: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "metric": self.metric,
            "size_bytes": self.size_bytes,
            "bits_per_weight": round(self.bits_per_weight, 4),
            "latency_ms": round(self.latency_ms, 4),
            "meets": self.meets,
            "seconds": round(self.seconds, 2),
            "choice": self.choice,
            "config": None if self.config is None else self.config.to_dict(),
        }


def _dominates(a: Candidate, b: Candidate) -> bool:
    no_worse = (
        a.metric >= b.metric and a.size_bytes <= b.size_bytes and a.latency_ms <= b.latency_ms
    )
    better = a.metric > b.metric or a.size_bytes < b.size_bytes or a.latency_ms < b.latency_ms
    return no_worse and better


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """The non-dominated candidates, smallest first."""
    front = [c for c in candidates if not any(_dominates(o, c) for o in candidates)]
    return sorted(front, key=lambda c: (c.size_bytes, c.latency_ms))


@dataclass
class AutoResult:
    """``model`` (the chosen quantized model), its ``config`` (None when only the float model
    met the constraint) and ``metric``; ``baseline_metric`` of the float model; ``candidates``
    (every model tried, in order) and ``pareto`` (the non-dominated ones)."""

    model: nn.Module
    config: QuantConfig | None
    metric: float
    baseline_metric: float
    chosen: Candidate
    candidates: list[Candidate]
    report: SensitivityReport
    objective: str
    max_drop: float
    seconds: float

    @property
    def pareto(self) -> list[Candidate]:
        return pareto_front(self.candidates)

    @property
    def meets(self) -> bool:
        return self.chosen.meets

    def table(self) -> str:
        front = {id(c) for c in self.pareto}
        rows = [
            {
                "candidate": ("* " if c is self.chosen else "") + c.name,
                "metric": f"{c.metric:.4f}",
                "bits/weight": f"{c.bits_per_weight:.2f}",
                "size KiB": f"{c.size_bytes / 1024:,.1f}",
                "latency ms": f"{c.latency_ms:.3f}",
                "meets": "yes" if c.meets else "no",
                "pareto": "yes" if id(c) in front else "",
                "s": f"{c.seconds:.1f}",
            }
            for c in self.candidates
        ]
        cols = ["candidate", "metric", "bits/weight", "size KiB", "latency ms", "meets", "pareto"]
        return format_table(rows, cols + ["s"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "max_drop": self.max_drop,
            "baseline_metric": self.baseline_metric,
            "metric": self.metric,
            "chosen": self.chosen.name,
            "seconds": round(self.seconds, 2),
            "candidates": [c.to_dict() for c in self.candidates],
            "pareto": [c.name for c in self.pareto],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the search (every candidate, the front, the choice) as JSON."""
        out = Path(path)
        out.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        return out

    def plot(self, path: str | os.PathLike) -> Path:
        """The Pareto plot (see :func:`lowbit.analysis.plots.plot_pareto`)."""
        from lowbit.analysis.plots import plot_pareto

        return plot_pareto(self, path)
