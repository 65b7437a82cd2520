"""Wall-clock latency of a callable: warm-up, then repeated timed runs, reported as percentiles.

Speed claims in lowbit always time the float baseline and the quantized model in the same process
and report the ratio: :func:`compare_latency` times several callables in interleaved rounds, so a
slow spell of the machine (another process, a frequency change) hits all of them alike.

>>> r = measure_latency(lambda: model(x), min_time_s=0.5)  # doctest: +SKIP
>>> r.median_ms, r.runs  # doctest: +SKIP
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["LatencyResult", "measure_latency", "compare_latency"]


@dataclass(frozen=True)
class LatencyResult:
    """Per-call latency in milliseconds over ``runs`` timed calls; ``counter_per_call``: what a
    ``counter`` given to :func:`compare_latency` advanced per call (None: none given/readable)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    counter_per_call: float | None = None

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
    times = _timed(fn, warmup=warmup, min_runs=min_runs, min_time_s=min_time_s, max_runs=max_runs)
    return _summary(times)


def _timed(fn, *, warmup: int, min_runs: int, min_time_s: float, max_runs: int = 10_000):
    """Milliseconds of each timed call of ``fn`` after ``warmup`` untimed ones."""
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
    return times


def _summary(times: list[float], used: list[float] | None = None) -> LatencyResult:
    times = sorted(times)
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    per_call = used[0] / used[1] if used else None
    return LatencyResult(statistics.median(times), pick(0.1), pick(0.9), len(times), per_call)


def compare_latency(
    fns: dict[str, Callable[[], object]],
    *,
    rounds: int = 5,
    min_time_s: float = 1.0,
    counter: Callable[[], float | None] | None = None,
) -> dict[str, LatencyResult]:
    """Latency of each callable, timed in ``rounds`` interleaved rounds (A, B, C, A, B, C...).

    Each callable gets ``min_time_s / rounds`` seconds per round; its result pools all its runs.
    ``counter`` (e.g. a RAPL energy reading in µJ) is read around each callable's share of a
    round; its advance per call, warm-up calls included, lands in ``counter_per_call``.

    >>> r = compare_latency({"float": lambda: f(x), "int8": lambda: q(x)})  # doctest: +SKIP
    >>> r["float"].median_ms / r["int8"].median_ms  # speed-up  # doctest: +SKIP
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    times: dict[str, list[float]] = {name: [] for name in fns}
    used: dict[str, list[float] | None] = {name: [0.0, 0] for name in fns}  # amount, calls
    for k in range(rounds):
        for name, fn in fns.items():
            warmup = 3 if k == 0 else 1
            before = counter() if counter is not None else None
            r = _timed(fn, warmup=warmup, min_runs=2, min_time_s=min_time_s / rounds)
            after = counter() if counter is not None else None
            times[name] += r
            if used[name] is not None and before is not None and after is not None \
                    and after >= before:  # fmt: skip
                used[name][0] += after - before
                used[name][1] += len(r) + warmup
            else:  # absent, unreadable, or wrapped around: no per-call figure for this one
                used[name] = None
    return {name: _summary(t, used[name]) for name, t in times.items()}
