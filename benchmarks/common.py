"""Shared helpers for the benchmark scripts: interleaved timing and the machine description."""

from __future__ import annotations

from lowbit.measure import measure_latency
from lowbit.measure.machine import describe_machine


def machine() -> str:
    """One line describing where the numbers were taken."""
    return describe_machine()


def time_pair(float_fn, quant_fn, min_time_s: float = 1.0, rounds: int = 3):
    """Median latencies (ms) of the float and quantized callables, interleaved over ``rounds``.

    Interleaving spreads machine noise (other processes, frequency changes) over both sides.
    """
    f_times, q_times = [], []
    for _ in range(rounds):
        f_times.append(measure_latency(float_fn, min_time_s=min_time_s / rounds).median_ms)
        q_times.append(measure_latency(quant_fn, min_time_s=min_time_s / rounds).median_ms)
    f_times.sort()
    q_times.sort()
    return f_times[len(f_times) // 2], q_times[len(q_times) // 2]
