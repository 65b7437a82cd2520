"""Running min/max observers, per tensor or per channel.

``MinMaxObserver`` keeps the exact extremes seen so far; ``MovingAverageMinMaxObserver`` keeps an
exponential moving average of each batch's extremes (less sensitive to one odd batch):

    min_t = (1 - momentum) * min_{t-1} + momentum * batch_min_t      (min_1 = batch_min_1)

>>> obs = MinMaxObserver("per_channel:1")
>>> obs.update(torch.tensor([[1.0, -2.0], [3.0, 0.0]]))
>>> obs.update(torch.tensor([[0.0, 5.0]]))       # another batch size: still one value per channel
>>> obs.minmax()
(tensor([ 0., -2.]), tensor([3., 5.]))
"""

from __future__ import annotations

import torch

from lowbit.errors import CalibrationError, ConfigError
from lowbit.granularity import Granularity, GranularityKind
from lowbit.observers.base import Observer
from lowbit.primitives import block_minmax

__all__ = ["MinMaxObserver", "MovingAverageMinMaxObserver"]

_SUPPORTED = (GranularityKind.PER_TENSOR, GranularityKind.PER_CHANNEL)


class MinMaxObserver(Observer):
    """Exact running minimum and maximum.

    Args:
        granularity: ``per_tensor`` (0-d results) or ``per_channel:axis`` (1-D results of length
            ``shape[axis]``, the same for every batch whatever its other dimensions).
    """

    def __init__(self, granularity: Granularity | str | None = None) -> None:
        super().__init__(granularity)
        if self.granularity.kind not in _SUPPORTED:
            # per_token / per_group scales of activations depend on the batch's own tokens, so
            # they are computed at run time, not calibrated.
            raise ConfigError(
                f"{type(self).__name__} supports per_tensor and per_channel granularity, got "
                f"{self.granularity}; per-token scales are dynamic and need no observer"
            )
        self._min: torch.Tensor | None = None
        self._max: torch.Tensor | None = None

    def _batch_minmax(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reduce a batch to ``(min, max)``: 0-d per tensor, ``[shape[axis]]`` per channel."""
        if self.granularity.kind is GranularityKind.PER_TENSOR:
            lo, hi = block_minmax(x, self.granularity.block_size(x.shape))
            return lo.reshape(()).float(), hi.reshape(()).float()
        axis = self.granularity.axis
        if not -x.dim() <= axis < x.dim() or x.dim() == 0:
            raise CalibrationError(
                f"{type(self).__name__}: per_channel axis {axis} does not exist in a batch of "
                f"shape {list(x.shape)}"
            )
        lo, hi = block_minmax(x, self.granularity.block_size(x.shape))
        lo, hi = lo.reshape(-1).float(), hi.reshape(-1).float()
        if self._min is not None and self._min.shape != lo.shape:
            raise CalibrationError(
                f"{type(self).__name__}: channel axis {axis} has {lo.numel()} entries in this "
                f"batch (shape {list(x.shape)}) but {self._min.numel()} in earlier batches"
            )
        return lo, hi

    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = self._batch_minmax(x)
        if self._min is None or self._max is None:
            self._min, self._max = lo, hi
        else:
            self._combine(lo, hi)

    def _combine(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self._min = torch.minimum(self._min, lo)
        self._max = torch.maximum(self._max, hi)

    def _minmax(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._min.clone(), self._max.clone()


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of per-batch minima and maxima.

    Args:
        momentum: weight of the newest batch, in (0, 1]; 1 keeps only the last batch.
        granularity: as for :class:`MinMaxObserver`.

    ``min = (1 - momentum) * min + momentum * batch_min`` (same for max); the first batch
    initialises both.
    """

    def __init__(self, momentum: float = 0.1, granularity: Granularity | str | None = None) -> None:
        if not 0.0 < momentum <= 1.0:
            raise ConfigError(f"momentum must be in (0, 1], got {momentum}")
        super().__init__(granularity)
        self.momentum = float(momentum)

    def _combine(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        m = self.momentum
        self._min = (1.0 - m) * self._min + m * lo
        self._max = (1.0 - m) * self._max + m * hi
