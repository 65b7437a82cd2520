"""The report's plots (matplotlib figures, no pyplot state): accuracy vs size, latency per
variant, per-layer weight SQNR, and the weight histogram of one row with each 4-bit grid."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lowbit.analysis.plots import _figure, _front_2d, _save

if TYPE_CHECKING:
    from lowbit.reporting.result import Report

__all__ = ["draw_all"]


def accuracy_vs_size(rep: Report, path: Path) -> Path:
    fig = _figure(figsize=(8, 4.5))
    ax = fig.subplots()
    pts = [(r["size_bytes"] / 1024, r["metric"], r["variant"]) for r in rep.rows]
    ref = pts[0][1]
    floor = ref - max(0.05 * abs(ref), 1e-3)  # zoom on the useful range; say what fell below
    shown = [p for p in pts if p[1] >= floor]
    below = [p[2] for p in pts if p[1] < floor]
    ax.scatter([p[0] for p in shown], [p[1] for p in shown], zorder=3)
    front = _front_2d([(p[0], p[1]) for p in shown])
    for x, y, name in shown:  # label the front and float32; the tables have the rest
        if (x, y) in front or name == "float32":
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.step(*zip(*front, strict=True), where="post", color="gray", alpha=0.6, label="Pareto front")
    if below:
        ax.set_title(f"Accuracy vs size (below the plot: {', '.join(below)})", fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("size on disk (KiB, log)")
    ax.set_ylabel(rep.meta["metric"])
    if not below:
        ax.set_title("Accuracy vs size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def latency(rep: Report, path: Path) -> Path:
    fig = _figure(figsize=(9, 4.5))
    axes = fig.subplots(1, 2)
    names = [r["variant"] for r in rep.rows]
    for ax, key, label in ((axes[0], "latency_b1_ms", "batch 1"),
                           (axes[1], "latency_bn_ms", f"batch {rep.meta['batch_size']}")):  # fmt: skip
        vals = [r[key] for r in rep.rows]
        ax.barh(names, vals, color=["black"] + ["tab:blue"] * (len(vals) - 1))
        ax.axvline(vals[0], ls="--", color="black", alpha=0.5)
        ax.set_xlabel(f"median latency, {label} (ms)")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=6)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Latency per variant (dashed: float32, same run)")
    fig.tight_layout()
    return _save(fig, path)


def layer_error(rep: Report, path: Path) -> Path:
    fig = _figure(figsize=(10, 4.5))
    ax = fig.subplots()
    layers = list(rep.float_row["layer_sqnr_db"])
    for r in rep.rows[1:]:
        vals = [r["layer_sqnr_db"].get(n) for n in layers]
        if any(v is not None for v in vals):
            ax.plot(range(len(layers)), [float("nan") if v is None else min(v, 80) for v in vals],
                    marker="o", ms=3, label=r["variant"])  # fmt: skip
    ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=6)
    ax.set_ylabel("weight SQNR, dB (capped at 80)")
    ax.set_title("Per-layer weight error (higher is better; gaps: layer kept in float)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return _save(fig, path)


def histogram(rep: Report, path: Path) -> Path:
    """Row 0 of the largest layer, with the values each 4-bit format can represent."""
    shown = [r for r in rep.rows if r["variant"] in rep.groups.get("4-bit formats", ())
             and r.get("grid")]  # fmt: skip
    fig = _figure(figsize=(9, 1.8 + 1.6 * max(1, len(shown))))
    axes = fig.subplots(max(1, len(shown)), 1, sharex=True, squeeze=False)[:, 0]
    for ax, r in zip(axes, shown or [None], strict=False):
        ax.hist(rep.weights_row, bins=80, color="tab:gray")
        if r is not None:
            for v in r["grid"]:
                ax.axvline(v, color="tab:red", lw=0.8, alpha=0.8)
            ax.set_ylabel(r["variant"], fontsize=8)
    axes[-1].set_xlabel(
        f"weights of row 0 of {rep.meta.get('histogram_layer')}\n(red: the values "
        "the format can store there; group-wise formats have one scale per group, "
        "so several grids)",
        fontsize=8,
    )
    fig.suptitle("Weight histogram and the 4-bit grids")
    fig.tight_layout()
    return _save(fig, path)


def draw_all(rep: Report, out: Path) -> dict[str, Path]:
    return {
        "Accuracy vs size": accuracy_vs_size(rep, out / "accuracy_vs_size.png"),
        "Latency per variant": latency(rep, out / "latency.png"),
        "Per-layer weight error": layer_error(rep, out / "layer_error.png"),
        "Weight histogram with 4-bit grids": histogram(rep, out / "weight_histogram.png"),
    }
