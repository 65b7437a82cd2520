"""Glue between range methods, the observers they need, and the solvers in :mod:`lowbit.ranges`.

>>> obs = make_observer("percentile")                 # a HistogramObserver
>>> obs.update(torch.randn(10_000))
>>> lo, hi = solve_range(obs, "percentile", get_format("int8"), symmetric=True, percentile=99.9)
"""

from __future__ import annotations

import torch

from lowbit.errors import ConfigError
from lowbit.formats import IntFormat, NumberFormat, get_format
from lowbit.granularity import Granularity, GranularityKind
from lowbit.observers.base import Observer
from lowbit.observers.histogram import HistogramObserver
from lowbit.observers.minmax import MinMaxObserver, MovingAverageMinMaxObserver
from lowbit.ranges import (
    RangeMethod,
    entropy_range,
    finalize_range,
    mse_range,
    percentile_range,
)

__all__ = ["make_observer", "solve_range"]

_HISTOGRAM_METHODS = (RangeMethod.PERCENTILE, RangeMethod.MSE, RangeMethod.ENTROPY)


def make_observer(
    method: RangeMethod | str,
    granularity: Granularity | str | None = None,
    bins: int = 2048,
    momentum: float = 0.1,
) -> Observer:
    """The observer a range method needs.

    ``minmax`` -> :class:`MinMaxObserver`; ``moving_average`` ->
    :class:`MovingAverageMinMaxObserver` (both per-tensor or per-channel; ``momentum`` applies);
    ``percentile``/``mse``/``entropy`` -> :class:`HistogramObserver` (per-tensor only; ``bins``).
    """
    method = RangeMethod.parse(method)
    if method is RangeMethod.MINMAX:
        return MinMaxObserver(granularity)
    if method is RangeMethod.MOVING_AVERAGE:
        return MovingAverageMinMaxObserver(momentum, granularity)
    gran = Granularity() if granularity is None else Granularity.parse(granularity)
    if gran.kind is not GranularityKind.PER_TENSOR:
        raise ConfigError(
            f"range method {method.value!r} solves on a per-tensor histogram, got granularity "
            f"{gran}; use 'minmax' or 'moving_average' for per-channel ranges"
        )
    return HistogramObserver(bins, gran)


def _int_format(fmt: NumberFormat | str) -> IntFormat:
    parsed = get_format(fmt)
    if not isinstance(parsed, IntFormat):
        raise ConfigError(
            f"range calibration needs an integer format, got {parsed}; float formats are a cast"
        )
    return parsed


def solve_range(
    observer: Observer,
    method: RangeMethod | str,
    fmt: NumberFormat | str,
    symmetric: bool,
    percentile: float = 99.99,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipping range ``(min_val, max_val)`` (float32) from an observer's statistics.

    ``minmax``/``moving_average`` return ``observer.minmax()`` (0-d or per-channel 1-D; the
    symmetric widening happens in ``choose_qparams``). ``percentile``/``mse``/``entropy`` need a
    :class:`HistogramObserver` and return 0-d tensors, ``(-t, t)`` when ``symmetric``. Every
    range is at least a few float32 ulps wide.
    """
    method, fmt = RangeMethod.parse(method), _int_format(fmt)
    if method in (RangeMethod.MINMAX, RangeMethod.MOVING_AVERAGE):
        return finalize_range(*observer.minmax())
    if not isinstance(observer, HistogramObserver):
        raise ConfigError(
            f"range method {method.value!r} needs a HistogramObserver, got "
            f"{type(observer).__name__}; build one with make_observer({method.value!r})"
        )
    counts, edges = observer.histogram()
    if method is RangeMethod.PERCENTILE:
        return percentile_range(counts, edges, percentile, symmetric=symmetric)
    if method is RangeMethod.MSE:
        return mse_range(counts, edges, fmt, symmetric)
    return entropy_range(counts, edges, fmt, symmetric)
