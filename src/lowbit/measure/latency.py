"""Wall-clock latency of a callable: warm-up, then repeated timed runs, reported as percentiles.

Speed claims in lowbit always time the float baseline and the quantized model in the same process
and report the ratio; use :func:`measure_latency` on both and divide the medians.

>>> r = measure_latency(lambda: model(x), min_time_s=0.5)  # doctest: +SKIP
>>> r.median_ms, r.runs  # doctest: +SKIP
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["LatencyResult", "measure_latency"]


@dataclass(frozen=True)
class LatencyResult:
    """Per-call latency in milliseconds over ``runs`` timed calls."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    def __str__(self) -> str:
        return (
            f"{self.median_ms:.3f} ms (p10 {self.p10_ms:.3f}, p90 {self.p90_ms:.3f}, n={self.runs})"
        )


def measure_latency(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    min_runs: int = 5,
    min_time_s: float = 1.0,
    max_runs: int = 10_000,
) -> LatencyResult:
    """Time ``fn()`` until both ``min_runs`` calls and ``min_time_s`` seconds have passed.

    The median resists the outliers a shared machine produces (other processes, page faults).
    """
    if min_runs < 1 or warmup < 0:
        raise ValueError("min_runs must be >= 1 and warmup >= 0")
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < max_runs and (
            len(times) < min_runs or time.perf_counter() - start < min_time_s
        ):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    return LatencyResult(statistics.median(times), pick(0.1), pick(0.9), len(times))
