"""Shared helpers for the benchmark scripts: interleaved timing and the machine description."""

from __future__ import annotations

from lowbit.measure.latency import compare_latency
from lowbit.measure.machine import describe_machine


def machine() -> str:
    """One line describing where the numbers were taken."""
    return describe_machine()


def time_pair(float_fn, quant_fn, min_time_s: float = 1.0, rounds: int = 3):
    """Median latencies (ms) of the float and quantized callables, interleaved over ``rounds``
    (:func:`lowbit.measure.latency.compare_latency`)."""
    r = compare_latency({"float": float_fn, "quant": quant_fn}, rounds=rounds,
                        min_time_s=min_time_s)  # fmt: skip
    return r["float"].median_ms, r["quant"].median_ms

