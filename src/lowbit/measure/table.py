"""Plain-text tables for the CLI, the demo and the benchmarks (Markdown pipe syntax).

>>> print(format_table([{"scheme": "W8A8", "acc": 0.97}], ["scheme", "acc"]))
| scheme | acc   |
|--------|-------|
| W8A8   | 0.970 |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["format_table"]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Render ``rows`` (dicts) as a Markdown table with the given column order."""
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = lambda vals: (
        "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)) + " |"
    )  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(list(columns)), sep] + [line(r) for r in cells])
