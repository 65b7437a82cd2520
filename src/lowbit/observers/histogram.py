"""Histogram observer: the value distribution that percentile, MSE and entropy solvers need.

The histogram has ``bins`` equal bins over ``[lo, hi]``, the running min and max of the data. When
a batch falls outside, the range widens to cover it and the old counts are re-binned onto the new
edges: each old bin's count is spread over the new bins it overlaps, in proportion to the overlap
(mass assumed uniform inside a bin; see :func:`lowbit.ranges.rebin_histogram`). The total count is
preserved; resolution is lost only in proportion to how much the range grew.

>>> obs = HistogramObserver(bins=4)
>>> obs.update(torch.tensor([0.0, 1.0, 3.5, 4.0]))
>>> obs.histogram()
(tensor([1., 1., 0., 2.], dtype=torch.float64), tensor([0., 1., 2., 3., 4.], dtype=torch.float64))
"""

from __future__ import annotations

import torch

from lowbit.errors import ConfigError
from lowbit.granularity import Granularity, GranularityKind
from lowbit.observers.base import Observer
from lowbit.ranges import rebin_histogram

__all__ = ["HistogramObserver"]

_F64 = torch.float64


def _span(lo: float, hi: float) -> tuple[float, float]:
    """``[lo, hi]``, widened by a relative 2^-20 when degenerate (constant data) so bins exist."""
    if hi - lo > 0.0:
        return lo, hi
    return lo, lo + max(abs(lo), 1.0) * 2.0**-20


class HistogramObserver(Observer):
    """Per-tensor float64 histogram of every value seen, plus the exact min and max.

    Args:
        bins: number of equal-width bins (2048 as in TensorRT's entropy calibration).
        granularity: must be per-tensor (``None`` or ``"per_tensor"``).
    """

    def __init__(self, bins: int = 2048, granularity: Granularity | str | None = None) -> None:
        super().__init__(granularity)
        if self.granularity.kind is not GranularityKind.PER_TENSOR:
            raise ConfigError(
                f"HistogramObserver is per-tensor only, got granularity {self.granularity}; "
                f"use MinMaxObserver for per-channel statistics"
            )
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ConfigError(f"HistogramObserver needs an integer bins >= 2, got {bins!r}")
        self.bins = bins
        self._counts: torch.Tensor | None = None
        self._lo = self._hi = 0.0  # histogram range (== [min, max] unless the data was constant)
        self._min = self._max = 0.0

    @property
    def edges(self) -> torch.Tensor:
        """The ``bins + 1`` bin edges over the current range."""
        return torch.linspace(self._lo, self._hi, self.bins + 1, dtype=_F64)

    def _observe(self, x: torch.Tensor) -> None:
        values = x.reshape(-1).to(_F64)
        batch_min, batch_max = values.min().item(), values.max().item()
        if self._counts is None:
            self._min, self._max = batch_min, batch_max
            self._lo, self._hi = _span(batch_min, batch_max)
            self._counts = torch.zeros(self.bins, dtype=_F64)
        elif batch_min < self._lo or batch_max > self._hi:
            self._grow(min(batch_min, self._lo), max(batch_max, self._hi))
        self._min, self._max = min(self._min, batch_min), max(self._max, batch_max)
        # histc ignores values outside [lo, hi]; the range covers the batch, so none are lost.
        self._counts += torch.histc(values, self.bins, self._lo, self._hi)

    def _grow(self, lo: float, hi: float) -> None:
        """Widen the range to ``[lo, hi]`` and re-bin the old counts onto it."""
        old_edges = self.edges
        self._lo, self._hi = lo, hi
        self._counts = rebin_histogram(self._counts, old_edges, self.edges)

    def _minmax(self) -> tuple[torch.Tensor, torch.Tensor]:
        f32 = torch.float32
        return torch.tensor(self._min, dtype=f32), torch.tensor(self._max, dtype=f32)

    def histogram(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(counts[bins], edges[bins + 1])``, both float64; counts sum to the values seen."""
        self._require_data()
        return self._counts.clone(), self.edges
