"""Calibration statistics (observers) and the entry points that turn them into ranges.

Collect with an observer, solve with :func:`solve_range` (the math lives in :mod:`lowbit.ranges`):

>>> obs = make_observer("mse")  # doctest: +SKIP
>>> for batch in batches:  # doctest: +SKIP
...     obs.update(batch)
>>> min_val, max_val = solve_range(obs, "mse", "int8", symmetric=False)  # doctest: +SKIP
>>> scale, zero_point = choose_qparams(min_val, max_val, get_format("int8"), symmetric=False)  # doctest: +SKIP
"""

from __future__ import annotations

from lowbit.observers.base import Observer
from lowbit.observers.factory import make_observer, solve_range
from lowbit.observers.histogram import HistogramObserver
from lowbit.observers.minmax import MinMaxObserver, MovingAverageMinMaxObserver
from lowbit.ranges import RangeMethod

__all__ = [
    "RangeMethod",
    "Observer",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "HistogramObserver",
    "make_observer",
    "solve_range",
]
