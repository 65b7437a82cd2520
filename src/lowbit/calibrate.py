"""Feed calibration batches through a model and collect per-layer activation statistics.

Calibration data is what a user would pass to the model: an iterable whose items are a tensor
(``model(x)``), a tuple/list of positional arguments (``model(*args)``) or a dict of keyword
arguments (``model(**kwargs)``). A bare tensor counts as one batch.

>>> ranges = collect_input_ranges(model, {"fc": (model.fc, spec)}, [torch.randn(8, 4)])  # doctest: +SKIP
>>> ranges["fc"]                                     # (min_val, max_val) of fc's inputs  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.config import TensorQuantSpec
from lowbit.errors import CalibrationError
from lowbit.observers import Observer, make_observer, solve_range

__all__ = ["iter_batches", "run_model", "collect_input_ranges", "PreparedBatches"]

log = logging.getLogger(__name__)


class PreparedBatches(list):
    """Calibration already turned into ``(args, kwargs)`` pairs (to pass over it many times)."""


def iter_batches(calibration: Any) -> Iterator[tuple[tuple, dict]]:
    """Yield ``(args, kwargs)`` per calibration item; raise a clear error for anything else."""
    if isinstance(calibration, PreparedBatches):
        yield from calibration
        return
    if calibration is None:
        raise CalibrationError(
            "this scheme calibrates activation ranges and needs calibration data: pass "
            "calibration=[batch, ...] (tensors, tuples of args or dicts of kwargs), or use a "
            "dynamic / weight-only scheme such as 'W8A8-dynamic' or 'W8A16'"
        )
    if isinstance(calibration, torch.Tensor | dict):
        calibration = [calibration]
    if not isinstance(calibration, Iterable) or isinstance(calibration, str | bytes):
        raise CalibrationError(
            f"calibration must be an iterable of batches, got {type(calibration).__name__}"
        )
    for index, item in enumerate(calibration):
        if isinstance(item, torch.Tensor):
            yield (item,), {}
        elif isinstance(item, tuple | list):
            yield tuple(item), {}
        elif isinstance(item, dict):
            yield (), dict(item)
        else:
            raise CalibrationError(
                f"calibration item {index} is a {type(item).__name__}; items must be a tensor, a "
                "tuple/list of positional arguments or a dict of keyword arguments"
            )


def run_model(
    model: nn.Module, calibration: Any, desc: str = "calibrating", progress: bool | None = None
) -> int:
    """Run ``model`` on every calibration batch without gradients; returns the batch count."""
    total = (
        len(calibration)
        if hasattr(calibration, "__len__") and not isinstance(calibration, torch.Tensor | dict)
        else None
    )
    count = 0
    with torch.no_grad():
        bar = tqdm(
            iter_batches(calibration),
            desc=desc,
            total=total,
            unit="batch",
            disable=(not progress) if progress is not None else None,
            leave=False,
        )
        for args, kwargs in bar:
            try:
                model(*args, **kwargs)
            except (TypeError, RuntimeError, ValueError) as exc:
                raise CalibrationError(
                    f"the model failed on calibration batch {count}: {exc}{_hint(args, exc)}"
                ) from exc
            count += 1
    if count == 0:
        raise CalibrationError(
            "the calibration iterable is empty: give at least one batch (a few hundred samples "
            "are usually enough for static W8A8)"
        )
    return count


def collect_input_ranges(
    model: nn.Module,
    targets: dict[str, tuple[nn.Module, TensorQuantSpec]],
    calibration: Any,
    progress: bool | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Observe the first input of every target layer; return ``{name: (min_val, max_val)}``.

    Layers the calibration batches never reach are missing from the result (the caller keeps
    them in float and says why).
    """
    observers: dict[str, Observer] = {}
    handles = []

    def hook_for(name: str, spec: TensorQuantSpec):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                obs = observers.setdefault(name, make_observer(spec.range_method))
                try:
                    obs.update(x.detach())
                except CalibrationError as exc:
                    raise CalibrationError(f"input of layer {name!r}: {exc}") from None

        return hook

    try:
        for name, (module, spec) in targets.items():
            handles.append(module.register_forward_pre_hook(hook_for(name, spec)))
        run_model(model, calibration, progress=progress)
    finally:
        for h in handles:
            h.remove()
    ranges = {}
    for name, (_module, spec) in targets.items():
        if name in observers:
            ranges[name] = solve_range(
                observers[name],
                spec.range_method,
                spec.int_format,
                spec.symmetric,
                percentile=spec.percentile,
            )
            lo, hi = observers[name].minmax()
            if float((hi - lo).abs().max()) == 0.0:
                warnings.warn(
                    f"layer {name!r} saw only the value {float(lo.flatten()[0]):g} on every "
                    "calibration batch: its input grid has no width and other inputs will be "
                    "clipped; calibrate on real data (or use a dynamic scheme)",
                    UserWarning,
                    stacklevel=4,
                )
    return ranges


def _hint(args: tuple, exc: Exception) -> str:
    """A fix for the usual causes: (inputs, labels) pairs, integer or float64 tensors."""
    if isinstance(exc, CalibrationError):
        return ""  # already names the layer and the cause (NaN/Inf inputs)
    dtypes = {a.dtype for a in args if isinstance(a, torch.Tensor)}
    if dtypes & {torch.float64, torch.int64, torch.int32, torch.uint8} and "dtype" in str(exc):
        return (f". The batch holds {sorted(str(d) for d in dtypes)} tensors; convert them to "
                "the model's dtype (e.g. x.float()) or pass what the model takes")  # fmt: skip
    if len(args) > 1:
        return (". Tuples are passed as positional arguments, so for (inputs, labels) pairs "
                "pass [x for x, _ in loader]")  # fmt: skip
    return ""
