"""PNG plots of the analysis and the search (matplotlib figures, no pyplot state).

* :func:`plot_sensitivity`: per layer, the model-output SQNR with only that layer quantized,
  one bar per candidate (shorter bar = more sensitive layer).
* :func:`plot_pareto`: metric against size and against latency for every model ``lowbit.auto``
  tried, the constraint line, the front of each panel and the chosen model.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lowbit.analysis.report import SensitivityReport
    from lowbit.search.result import AutoResult

__all__ = ["plot_sensitivity", "plot_pareto"]


def _figure(**kwargs):
    """A figure outside pyplot: no global backend switch, nothing left open (Jupyter safe)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _db(noise: float | None) -> float:
    return float("nan") if noise is None else (60.0 if noise <= 0 else -10 * math.log10(noise))


def plot_sensitivity(report: SensitivityReport, path: str | os.PathLike) -> Path:
    """Grouped horizontal bars: layers top to bottom in model order, dB per candidate."""
    layers, cands = list(report.layers), report.candidates
    height = 0.8 / len(cands)
    fig = _figure(figsize=(9, 1.2 + 0.18 * len(layers) * max(2, len(cands)) / 2))
    ax = fig.subplots()
    for k, cand in enumerate(cands):
        rows = [report.row(n, cand) for n in layers]
        ys = [i + (k - (len(cands) - 1) / 2) * height for i in range(len(layers))]
        ax.barh(ys, [_db(r.noise) for r in rows], height=height, label=cand)
    ax.set_yticks(range(len(layers)), [n or "(model)" for n in layers], fontsize=7)
    ax.invert_yaxis()
    kind = "predicted (Hessian trace)" if report.method == "hessian" else "measured"
    ax.set_xlabel(f"model-output SQNR with only this layer quantized, dB ({kind})")
    ax.set_title("Per-layer sensitivity (shorter bar = more sensitive; missing = cannot apply)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def _front_2d(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both cost (x, lower) and metric (y, higher)."""
    best, front = -math.inf, []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def plot_pareto(result: AutoResult, path: str | os.PathLike) -> Path:
    """Two panels (metric vs size in KiB, metric vs latency in ms), one colour per kind."""
    fig = _figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2, sharey=True)
    kinds = {"float": "black", "uniform": "tab:blue", "mixed": "tab:orange", "+": "tab:green"}
    threshold = result.baseline_metric - result.max_drop
    for ax, attr, label in ((axes[0], "size_bytes", "size on disk (KiB, log)"),
                            (axes[1], "latency_ms", "latency, one calibration batch (ms)")):  # fmt: skip
        scale = 1024 if attr == "size_bytes" else 1
        for kind, color in kinds.items():
            pts = [c for c in result.candidates if _kind(c.name) == kind]
            ax.scatter([getattr(c, attr) / scale for c in pts], [c.metric for c in pts],
                       s=28, color=color, label=_legend(kind), zorder=3)  # fmt: skip
        front = _front_2d([(getattr(c, attr) / scale, c.metric) for c in result.candidates])
        ax.step(*zip(*front, strict=True), where="post", color="gray", alpha=0.6, label="front")
        ch = result.chosen
        ax.scatter([getattr(ch, attr) / scale], [ch.metric], marker="*", s=260, color="red",
                   zorder=4, label=f"chosen: {ch.name}")  # fmt: skip
        ax.axhline(
            threshold, ls="--", color="red", alpha=0.5, label=f"baseline − {result.max_drop}"
        )
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        if attr == "size_bytes":
            ax.set_xscale("log")
    axes[0].set_ylabel("metric (higher is better)")
    # keep the constraint in view; models far below it are cut off rather than squash the rest
    hi = max(c.metric for c in result.candidates)
    lo = min(threshold, max(min(c.metric for c in result.candidates),
                            threshold - 4 * max(result.max_drop, 1e-3)))  # fmt: skip
    pad = 0.05 * max(hi - lo, 1e-6)
    axes[0].set_ylim(lo - pad, hi + pad)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"lowbit.auto: {len(result.candidates)} models tried, objective {result.objective}"
    )
    fig.tight_layout()
    return _save(fig, path)


def _kind(name: str) -> str:
    if name == "float":
        return "float"
    if "+" in name:
        return "+"
    return name.split()[0]


def _legend(kind: str) -> str:
    return {"+": "mixed + error correction"}.get(kind, kind)


def _save(fig, path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
