"""Observer protocol: accumulate statistics of calibration batches, batch by batch.

An observer only collects; turning its statistics into a clipping range is the job of the range
solvers (:mod:`lowbit.ranges`, dispatched by :func:`lowbit.observers.solve_range`). Observers
detach and reduce every batch at once and never keep a reference to an input tensor.

>>> from lowbit.observers import MinMaxObserver
>>> obs = MinMaxObserver()
>>> obs.update(torch.tensor([-1.0, 3.0]))
>>> obs.update(torch.tensor([0.5, 4.0]))
>>> obs.num_batches, obs.minmax()
(2, (tensor(-1.), tensor(4.)))
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from lowbit.errors import CalibrationError
from lowbit.granularity import Granularity

__all__ = ["Observer", "check_batch"]


def check_batch(x: object, owner: str) -> torch.Tensor:
    """Return ``x`` detached (non-float dtypes as float32), or raise :class:`CalibrationError`.

    Rejects non-tensors, complex tensors, empty tensors and tensors holding NaN or Inf: one bad
    value would silently poison a running min/max or a histogram range forever.
    """
    if not isinstance(x, torch.Tensor):
        raise CalibrationError(f"{owner}.update expects a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise CalibrationError(f"{owner}.update got a complex tensor; observers take real values")
    if x.numel() == 0:
        raise CalibrationError(
            f"{owner}.update got an empty tensor of shape {list(x.shape)}; "
            f"calibration batches must contain at least one element"
        )
    x = x.detach()
    if not x.is_floating_point():
        return x.float()
    if not torch.isfinite(x).all():
        n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise CalibrationError(
            f"{owner}.update got a batch of shape {list(x.shape)} with {n_nan} NaN and {n_inf} "
            f"Inf values; check the calibration data and the layers feeding this one"
        )
    return x


class Observer(ABC):
    """Base class: ``update`` batches, then read ``minmax()`` (or richer statistics).

    Args:
        granularity: which elements share statistics; ``None`` means per-tensor.

    Subclasses implement ``_observe(x)`` (``x`` already checked and detached) and ``_minmax()``.
    """

    def __init__(self, granularity: Granularity | str | None = None) -> None:
        self.granularity = Granularity() if granularity is None else Granularity.parse(granularity)
        self._num_batches = 0

    def update(self, x: torch.Tensor) -> None:
        """Accumulate the statistics of one batch ``x`` (any shape, real, finite, non-empty)."""
        batch = check_batch(x, type(self).__name__)
        with torch.no_grad():
            self._observe(batch)
        self._num_batches += 1

    @property
    def num_batches(self) -> int:
        """How many batches ``update`` has accepted."""
        return self._num_batches

    def minmax(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(min_val, max_val)`` as float32 tensors (0-d per-tensor, 1-D per-channel)."""
        self._require_data()
        return self._minmax()

    def _require_data(self) -> None:
        if self._num_batches == 0:
            raise CalibrationError(
                f"{type(self).__name__}: observer has seen no data; call update(x) with at least "
                f"one calibration batch first"
            )

    @abstractmethod
    def _observe(self, x: torch.Tensor) -> None:
        """Fold one checked, detached batch into the running statistics."""

    @abstractmethod
    def _minmax(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The running ``(min_val, max_val)``; only called after at least one batch."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(granularity={self.granularity}, batches={self._num_batches})"
