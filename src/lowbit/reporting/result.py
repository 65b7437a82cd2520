"""The measured report: tables from the raw rows, written as Markdown, HTML and JSON.

Every number in a table is computed here from a raw row of :func:`lowbit.report` (kept whole in
the JSON with the machine, versions, date and inputs), so each one can be traced back:
``compression = float32 size / size`` from the artifact files, speed-ups are ratios of medians
timed in the same run, energy ratios come from the same estimate.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Report"]

Table = tuple[str, list[str], list[dict[str, Any]], str]  # title, columns, rows, note


@dataclass
class Report:
    """Raw rows (one per variant, float32 first), training rows, metadata and table groups."""

    rows: list[dict[str, Any]]
    training: list[dict[str, Any]]
    meta: dict[str, Any]
    groups: dict[str, tuple[str, ...]]
    weights_row: list[float] = field(default_factory=list)

    @property
    def float_row(self) -> dict[str, Any]:
        return self.rows[0]

    def row(self, variant: str) -> dict[str, Any]:
        for r in self.rows:
            if r["variant"] == variant:
                return r
        raise KeyError(f"no variant {variant!r} in this report")

    def _in(self, group: str) -> list[dict[str, Any]]:
        names = self.groups.get(group, ())
        return [self.float_row] + [r for r in self.rows[1:] if r["variant"] in names]

    # -- tables ----------------------------------------------------------------------------------
    def tables(self) -> list[Table]:
        f, m = self.float_row, self.meta["metric"]
        ratio = lambda a, b: f"{a / b:.2f}x" if b else "n/a"  # noqa: E731
        size = [{"variant": r["variant"], "bits/weight": f"{r['bits_per_weight']:.2f}",
                 "size KiB": f"{r['size_bytes'] / 1024:,.1f}",
                 "compression": ratio(f["size_bytes"], r["size_bytes"]),
                 "size reduction": f"{100 * (1 - r['size_bytes'] / f['size_bytes']):.1f} %"}
                for r in self._in("precision")]  # fmt: skip
        acc = [{"variant": r["variant"], m: f"{r['metric']:.4f}",
                "change": f"{r['metric'] - f['metric']:+.4f}",
                "layers quantized": "" if r is f else _quantized_share(r)}
               for r in self.rows]  # fmt: skip
        lat = [{"variant": r["variant"], "batch 1 ms": f"{r['latency_b1_ms']:.3f}",
                "speed-up b1": ratio(f["latency_b1_ms"], r["latency_b1_ms"]),
                f"batch {self.meta['batch_size']} ms": f"{r['latency_bn_ms']:.2f}",
                "speed-up": ratio(f["latency_bn_ms"], r["latency_bn_ms"])} for r in self.rows]  # fmt: skip
        n = self.meta["batch_size"]
        kernels = [{"variant": r["variant"], "batch 1": _kernel_summary(r, "kernels_b1"),
                    f"batch {n}": _kernel_summary(r, "kernels_bn")} for r in self.rows]  # fmt: skip
        energy = [{"variant": r["variant"], "estimate µJ": f"{r['energy_est_uj']:.2f}",
                   "compute µJ": f"{r['energy_est_parts_uj']['compute']:.2f}",
                   "weights µJ": f"{r['energy_est_parts_uj']['weights']:.2f}",
                   "variant / float32": ratio(r["energy_est_uj"], f["energy_est_uj"]),
                   "measured (RAPL) µJ": "n/a" if r["energy_rapl_uj"] is None
                   else f"{r['energy_rapl_uj']:.0f}"} for r in self.rows]  # fmt: skip
        tech = [{"variant": r["variant"], m: f"{r['metric']:.4f}",
                 "change": f"{r['metric'] - f['metric']:+.4f}",
                 "quantize s": f"{r['quantize_s']:.1f}"} for r in self._in("techniques")]  # fmt: skip
        fours = self._in("4-bit formats")
        common = [n for n in f["layer_sqnr_db"]
                  if all(r["layer_sqnr_db"].get(n) is not None for r in fours[1:])]  # fmt: skip
        four = [{"variant": r["variant"], "kind": _kind(r["variant"]), m: f"{r['metric']:.4f}",
                 "bits/weight": f"{r['bits_per_weight']:.2f}",
                 "layers left float": sum(v is None for v in r["layer_sqnr_db"].values()),
                 "median layer SQNR dB": _median_sqnr(r, common)} for r in fours]  # fmt: skip
        trade = [{"variant": r["variant"], "compression": ratio(f["size_bytes"], r["size_bytes"]),
                  "change": f"{r['metric'] - f['metric']:+.4f}",
                  "speed-up": ratio(f["latency_bn_ms"], r["latency_bn_ms"]),
                  "energy est. (variant / float32)": ratio(r["energy_est_uj"], f["energy_est_uj"])}
                 for r in self.rows]  # fmt: skip
        out: list[Table] = [
            ("Size and compression per precision", ["variant", "bits/weight", "size KiB",
             "compression", "size reduction"], size,
             "Artifact bytes on disk (lowbit.save); compression = float32 size / size."),
            (f"Accuracy: float vs quantized ({m})", ["variant", m, "change", "layers quantized"],
             acc, "Through the user's evaluate function; change = variant − float32; a variant "
             "with 0 layers quantized is the float model (every layer fell back, see the log)."),
            ("Latency", list(lat[0]), lat,
             "Medians of repeated runs; float32 and every variant timed in interleaved rounds of one "
             "run; speed-up = float / variant."),
            ("Kernels run at each batch size", list(kernels[0]), kernels,
             "Quantized layers per kernel in one untimed call: integer-weight kernels first, then "
             "float-compute paths (dequantize + float GEMM/conv, reference fallbacks, 16-bit "
             "cast layers) with the rows they ran at. Layers left float are not counted here."),
            (f"Energy per batch of {self.meta['batch_size']} (estimate)", list(energy[0]), energy,
             "Counted MACs of the Linear/Conv layers x per-op energy by precision + weight bytes "
             "read from DRAM (embeddings: the gathered rows) + activation bytes from SRAM; other "
             "ops (attention products, norms) are not counted; lower is better; source: "
             f"{self.meta['energy_source']}. Measured: RAPL package energy per call where "
             "readable."),
            (f"Techniques at 4 bits ({m})", ["variant", m, "change", "quantize s"], tech,
             "Post-training algorithms on W4A8 (and QAT when training data was given)."),
            ("Uniform vs non-uniform vs k-means at 4 bits", list(four[0]), four,
             "Median weight SQNR (stored vs float weights) over the layers every format here "
             "quantizes; bits/weight counts quantized layers only."),
            ("Trade-offs", list(trade[0]), trade, "Every variant on the four axes, from the rows above."),
        ]  # fmt: skip
        if self.training:
            train = [{"training": t["training"], "epochs": t["epochs"],
                      "s/epoch": f"{t['seconds_per_epoch']:.2f}",
                      "vs float32": ratio(t["seconds_per_epoch"],
                                          self.training[0]["seconds_per_epoch"]),
                      f"{m} after": f"{t['metric_after']:.4f}"} for t in self.training]  # fmt: skip
            out.insert(5, ("Training time", list(train[0]), train,
                           "Seconds per epoch over the given training batches, this machine."))  # fmt: skip
        return out

    # -- output ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "rows": self.rows, "training": self.training,
                "weights_row": self.weights_row}  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(_finite(self.to_dict()), indent=1, default=float, allow_nan=False)

    def to_markdown(self, plots: dict[str, str] | None = None) -> str:
        from lowbit.measure.table import format_table

        parts = [f"# {self.meta['title']}", _header(self.meta)]
        for title, cols, rows, note in self.tables():
            parts += [f"## {title}", format_table(rows, cols), f"_{note}_"]
        for name, path in (plots or {}).items():
            parts.append(f"![{name}]({path})")
        return "\n\n".join(parts) + "\n"

    def to_html(self, pngs: dict[str, bytes] | None = None) -> str:
        body = [
            f"<h1>{html.escape(self.meta['title'])}</h1>",
            f"<p>{html.escape(_header(self.meta))}</p>",
        ]
        for title, cols, rows, note in self.tables():
            head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
            cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>"
                            for c in cols) + "</tr>" for r in rows)  # fmt: skip
            body += [f"<h2>{html.escape(title)}</h2>", f"<table><tr>{head}</tr>{cells}</table>",
                     f"<p class=note>{html.escape(note)}</p>"]  # fmt: skip
        for name, data in (pngs or {}).items():
            b64 = base64.b64encode(data).decode("ascii")
            body.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' "
                        f"src='data:image/png;base64,{b64}'>")  # fmt: skip
        return _PAGE.format(title=html.escape(self.meta["title"]), body="\n".join(body))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``report.md``, ``report.html`` (self-contained), ``report.json`` and the PNGs."""
        from lowbit.reporting.plots import draw_all

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        pngs = draw_all(self, out)
        (out / "report.json").write_text(self.to_json(), encoding="utf-8")
        (out / "report.md").write_text(self.to_markdown({n: p.name for n, p in pngs.items()}),
                                       encoding="utf-8")  # fmt: skip
        (out / "report.html").write_text(self.to_html({n: p.read_bytes() for n, p in pngs.items()}),
                                         encoding="utf-8")  # fmt: skip
        return out


def _finite(v: Any) -> Any:
    """Strict JSON: non-finite floats (an all-zero layer's SQNR) become null."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def _kind(variant: str) -> str:
    return {"W4A16": "uniform", "NF4": "quantile (normal float)", "POT4": "powers of two",
            "KMEANS16": "k-means codebook", "float32": "float"}.get(variant, "")  # fmt: skip


def _median_sqnr(row: dict[str, Any], layers: list[str]) -> str:
    vals = sorted(
        row["layer_sqnr_db"][n] for n in layers if row["layer_sqnr_db"].get(n) is not None
    )
    return f"{vals[len(vals) // 2]:.1f}" if vals else "float"


def _header(meta: dict[str, Any]) -> str:
    m = meta["machine"]
    return (f"Measured on {m['cpu']} ({m['cores']} cores, {'/'.join(m['isa']) or 'no AVX flags'}), "
            f"torch {m['torch']}, Python {m['python']}, {m['date']}; {meta['parameters']:,} "
            f"parameters; calibration {meta['calibration_batches']} batches of "
            f"{meta['batch_size']}; {meta['seconds']} s in all.")  # fmt: skip


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:.2em .6em;
text-align:right}}th{{background:#eee}}td:first-child,th:first-child{{text-align:left}}
.note{{color:#555;font-size:90%}}img{{max-width:100%}}</style></head>
<body>
{body}
</body></html>
"""


def _kernel_summary(row: dict[str, Any], key: str) -> str:
    """``"12 int8 _int_mm, 2 dequant+bf16 matmul (256 rows)"``; ``"float"`` for the float model."""
    return row.get(key, {}).get("summary") or "float"


def _quantized_share(row: dict[str, Any]) -> str:
    """``"12"`` or ``"0 (5 left float)"``: layers stored quantized, and those that fell back."""
    q, f = row.get("layers_quantized", 0), row.get("layers_float", 0)
    return f"{q} ({f} left float)" if f else str(q)
