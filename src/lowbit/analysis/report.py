"""What :func:`lowbit.analyze` measured: one row per (layer, candidate), as a table, JSON or plot.

Each row's ``noise`` is the *predicted relative output noise* the layer adds under that
candidate, ``‖y − ỹ‖² / ‖y‖²`` — measured (``10^(−SQNR/10)``) or, with the Hessian method,
estimated as ``Ω / mean(y²)`` from HAWQ-v2's ``Ω = Tr(H)/n · ‖ΔW‖²``. Noises of independent
layers add up, which is what makes bit allocation a knapsack problem (see
:mod:`lowbit.analysis.allocate`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lowbit.config import QuantScheme
from lowbit.measure.table import format_table

__all__ = ["LayerInfo", "LayerSensitivity", "SensitivityReport"]


@dataclass(frozen=True)
class LayerInfo:
    """A quantizable layer: its weight count and float storage (bytes, latency when timed)."""

    name: str
    weights: int
    float_bytes: int
    float_latency_ms: float | None = None
    aliases: tuple[str, ...] = ()  # every name the module is registered under (tied modules)


@dataclass(frozen=True)
class LayerSensitivity:
    """One (layer, candidate) measurement.

    ``sqnr_db``: model-output SQNR with only this layer quantized (None under the Hessian
    method); ``noise``: predicted relative output noise (see module doc); ``metric_delta``:
    ``evaluate(model with this layer quantized) − evaluate(float model)`` when ``evaluate`` was
    given; ``weight_bytes``: stored bytes of the quantized weight; ``latency_ms``: the layer
    alone on its calibration input, when timed. ``skipped`` says why the candidate cannot
    quantize this layer (e.g. a group size that does not divide its rows); numbers are None.
    """

    layer: str
    candidate: str
    sqnr_db: float | None
    noise: float | None = None
    metric_delta: float | None = None
    weight_bytes: int | None = None
    latency_ms: float | None = None
    skipped: str | None = None


@dataclass
class SensitivityReport:
    """Per-layer sensitivity of a model to each candidate scheme."""

    candidates: tuple[str, ...]
    layers: dict[str, LayerInfo]
    rows: list[LayerSensitivity]
    method: str = "sqnr"
    baseline_metric: float | None = None
    hessian_traces: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    schemes: dict[str, QuantScheme] = field(default_factory=dict)

    def row(self, layer: str, candidate: str) -> LayerSensitivity:
        for r in self.rows:
            if r.layer == layer and r.candidate == candidate:
                return r
        raise KeyError(f"no row for layer {layer!r} and candidate {candidate!r}")

    def ranking(self, candidate: str | None = None) -> list[str]:
        """Layers from most to least sensitive: largest noise under ``candidate`` or, by
        default (or where ``candidate`` cannot apply), under the fewest-bit candidate that does."""

        def noise(name: str) -> float:
            rows = [r for r in self.rows if r.layer == name and r.skipped is None]
            pick = [r for r in rows if r.candidate == candidate] or rows[-1:]
            return pick[0].noise if pick else 0.0

        return sorted(self.layers, key=lambda n: -noise(n))

    def table(self) -> str:
        """One line per layer, one column per candidate: SQNR in dB (predicted for Hessian)."""
        cols = ["layer", "weights"] + [f"{c} dB" for c in self.candidates]
        if self.baseline_metric is not None:
            cols += [f"{c} Δmetric" for c in self.candidates]
        body = []
        for name, info in self.layers.items():
            line = {"layer": name or "(model)", "weights": f"{info.weights:,}"}
            for c in self.candidates:
                r = self.row(name, c)
                line[f"{c} dB"] = "skip" if r.skipped else f"{_db(r.noise):.1f}"
                if r.metric_delta is not None:
                    line[f"{c} Δmetric"] = f"{r.metric_delta:+.4f}"
            body.append(line)
        return format_table(body, cols)

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidates": list(self.candidates),
            "method": self.method,
            "baseline_metric": self.baseline_metric,
            "seconds": self.seconds,
            "layers": [asdict(i) for i in self.layers.values()],
            "rows": [_finite(asdict(r)) for r in self.rows],
            "hessian_traces": self.hessian_traces,
            "schemes": {k: v.to_dict() for k, v in self.schemes.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | os.PathLike) -> Path:
        out = Path(path)
        out.write_text(self.to_json(), encoding="utf-8")
        return out

    def plot(self, path: str | os.PathLike) -> Path:
        """Per-layer bars (see :func:`lowbit.analysis.plots.plot_sensitivity`)."""
        from lowbit.analysis.plots import plot_sensitivity

        return plot_sensitivity(self, path)


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """Strict JSON has no Infinity: an exact layer's SQNR is written as null."""
    return {k: None if isinstance(v, float) and math.isinf(v) else v for k, v in row.items()}


def _db(noise: float | None) -> float:
    return math.inf if not noise else -10.0 * math.log10(noise)
