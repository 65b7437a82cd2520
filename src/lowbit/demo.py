"""The main job on embedded data: train two small CNNs, quantize them every way, compare.

Tasks (``lowbit.tasks``): a 2-D CNN on scikit-learn's bundled digits and a 1-D CNN on MNIST-1D
generated locally. Every number is measured in this run: held-out test accuracy, artifact size
and bits per weight read back from the saved files, and the latency of one test batch, float32
and every variant timed in interleaved rounds of one run. ``lowbit.auto`` chooses on a
validation split held out of training, never on the test set it is reported on.

>>> rows = run_demo(tasks=("digits",), schemes=("W8A8", "NF4"))
>>> print(format_demo(rows))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import tempfile

import torch
from torch import nn
from tqdm.auto import tqdm

import lowbit
from lowbit.measure import bits_per_weight, compare_latency, format_table, top1_accuracy
from lowbit.serialization import artifact_size
from lowbit.tasks import TASKS, DigitsCNN, Split, hold_out, load_digits_split, train

__all__ = [
    "DigitsCNN",
    "load_digits_split",
    "train",
    "run_demo",
    "run_task",
    "format_demo",
    "DEMO_SCHEMES",
    "layers_left_float",
]

log = logging.getLogger(__name__)

AUTO = "auto (<=1 pt drop)"

# 16 down to 1 bit: casts, int8, uniform 4/3/2-bit, non-uniform grids, codebooks, ternary, binary;
# then PTQ algorithms on top of the low-bit presets.
DEMO_SCHEMES = (
    "FP16", "BF16", "W8A16", "W8A8", "W8A8-dynamic",
    "W4A16", "W4A16-g128", "W4A8", "NF4", "POT4", "KMEANS16",
    "W3A16-g128", "W3A16", "W2A16-g64", "KMEANS4", "TERNARY", "BINARY",
    # post-training error correction (issue 5): "PRESET+algorithm+..." variants
    "W4A8+cle+bias_correction", "W4A8+adaround", "W3A8", "W3A8+cle+bias_correction",
    "W3A8+adaround", "W4A16+gptq", "W2A16-g64+gptq",
    # mixed precision (issue 6): lowbit.auto, the smallest model within 1 point of float
    AUTO,
)  # fmt: skip


def run_task(
    task_name: str,
    schemes: tuple[str, ...] = DEMO_SCHEMES,
    epochs: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> list[dict[str, object]]:
    """Train one task's model, quantize it with every scheme and measure; one row per variant."""
    task = TASKS[task_name]
    split, val = hold_out(task.load(seed=seed), task.validation, seed=seed)
    torch.manual_seed(seed)  # the initial weights too: the demo's numbers are reproducible
    model = train(task.make_model(), split, epochs=epochs or task.epochs, seed=seed)
    calibration = list(split.x_train[:512].split(64))
    models = {"float32": model}
    for scheme in tqdm(schemes, desc=f"{task_name}: schemes", leave=False):
        if scheme in (AUTO, "auto"):
            models[scheme] = _auto(model, calibration, val)
        else:
            preset, *algorithms = scheme.split("+")
            models[scheme] = lowbit.quantize(model, preset, calibration=calibration,
                                             algorithm=algorithms or None, progress=False)  # fmt: skip
    batch = split.x_test[:batch_size]
    latency = compare_latency({n: (lambda m=m: m(batch)) for n, m in models.items()},
                              min_time_s=0.5)  # fmt: skip
    rows = [_row(task_name, n, m, split, latency[n], latency["float32"]) for n, m in models.items()]
    for row in rows:
        row["compression"] = f"{rows[0]['size (bytes)'] / row['size (bytes)']:.2f}x"
    return rows


def _auto(model: nn.Module, calibration, val: Split) -> nn.Module:
    """``lowbit.auto`` choosing on the validation split (one minute at most)."""
    accuracy = lambda m: top1_accuracy(m, val.x_train, val.y_train)  # noqa: E731
    result = lowbit.auto(model, calibration, accuracy, max_drop=0.01, time_budget=60,
                         progress=False)  # fmt: skip
    log.info("auto chose %s (%s)", result.chosen.name, result.config)
    return result.model


def run_demo(
    tasks: tuple[str, ...] = ("digits", "mnist1d"),
    schemes: tuple[str, ...] = DEMO_SCHEMES,
    epochs: int | None = None,
    seed: int = 0,
) -> list[dict[str, object]]:
    """:func:`run_task` for every task; rows carry a ``task`` column."""
    return [row for name in tasks for row in run_task(name, schemes, epochs, seed)]


def _row(task, name, model, split: Split, latency, float_latency) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        path = lowbit.save(model, tmp)
        size = artifact_size(path)
        record = getattr(model, "lowbit_record", None)
        bits = bits_per_weight(path) if record and record.layers else 32.0
    return {
        "task": task,
        "variant": name,
        "accuracy %": 100.0 * top1_accuracy(model, split.x_test, split.y_test),
        "bits/weight": bits,
        "size (bytes)": size,
        "batch latency ms": latency.median_ms,
        "speed-up": f"{float_latency.median_ms / latency.median_ms:.2f}x",
        "layers left float": layers_left_float(model),
        "weight dtypes": _weight_dtypes(model),
    }


def layers_left_float(model: nn.Module) -> str:
    """``"k of n"``: the quantizable layers a variant left in float (``lowbit_record.skipped``,
    e.g. convs whose rows a group size does not divide) out of all it considered; ``"all"`` for
    a float model. Compiled models (``torch.compile``) are read through to the original.

    >>> layers_left_float(lowbit.quantize(nn.Sequential(nn.Linear(27, 8)), "W4A16-g128"))
    '1 of 1'
    """
    record = getattr(getattr(model, "_orig_mod", model), "lowbit_record", None)
    if record is None:
        return "all"
    return f"{len(record.skipped)} of {len(record.skipped) + len(record.layers)}"


def _weight_dtypes(model: nn.Module) -> str:
    dtypes = {
        str(t.dtype).replace("torch.", "")
        for k, t in model.state_dict().items()
        if k.endswith(("weight", "qweight")) and t.dim() > 1
    }
    return ",".join(sorted(dtypes))


COLUMNS = [
    "task",
    "variant",
    "accuracy %",
    "bits/weight",
    "size (bytes)",
    "compression",
    "batch latency ms",
    "speed-up",
    "layers left float",
    "weight dtypes",
]


def format_demo(rows: list[dict[str, object]]) -> str:
    """One table per task, then a side-by-side accuracy summary when there are several tasks."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    parts = [format_table([r for r in rows if r["task"] == t], COLUMNS) for t in tasks]
    if len(tasks) > 1:
        parts.append(format_table(_summary(rows, tasks), ["variant"] + _summary_columns(tasks)))
    return "\n\n".join(parts)


def _summary_columns(tasks: list[str]) -> list[str]:
    return [f"{t} {c}" for t in tasks for c in ("acc %", "Δ pts", "bits/w")]


def _summary(rows: list[dict[str, object]], tasks: list[str]) -> list[dict[str, object]]:
    by_key = {(r["task"], r["variant"]): r for r in rows}
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        entry: dict[str, object] = {"variant": variant}
        for t in tasks:
            row, base = by_key.get((t, variant)), by_key[(t, "float32")]
            if row is None:
                continue
            entry[f"{t} acc %"] = row["accuracy %"]
            entry[f"{t} Δ pts"] = f"{row['accuracy %'] - base['accuracy %']:+.2f}"
            entry[f"{t} bits/w"] = row["bits/weight"]
        out.append(entry)
    return out
