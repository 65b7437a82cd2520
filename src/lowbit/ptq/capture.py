"""Feeding calibration data to one layer at a time, without keeping the model's activations.

``layer_inputs`` runs the model on one batch and stops it (by raising from a forward pre-hook)
as soon as the wanted layers have received their inputs, so nothing after them is computed and
only those inputs are returned. The algorithms call it layer after layer (sequential PTQ as in
GPTQ and AdaRound): each layer then sees the inputs produced by the *already quantized* layers
before it, and memory holds one layer's inputs at a time, never the whole model's activations.

>>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> x = layer_inputs(model, [model[2]], ((torch.randn(3, 4),), {}))[0]
>>> tuple(x.shape)
(3, 8)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lowbit.calibrate import PreparedBatches, iter_batches
from lowbit.errors import CalibrationError

__all__ = [
    "Batch",
    "materialize",
    "layer_inputs",
    "execution_order",
    "stages",
    "run",
    "call_model",
    "flat_tensors",
    "outputs_match",
]

Batch = tuple[tuple, dict]


class _Stop(Exception):
    """Raised from a hook to end a forward pass early (caught right here, never escapes)."""


def materialize(calibration: Any) -> PreparedBatches:
    """The calibration batches as a list of ``(args, kwargs)``: the algorithms pass over them
    many times, and a generator would be exhausted after the first."""
    batches = PreparedBatches(iter_batches(calibration))
    if not batches:
        raise CalibrationError(
            "the calibration iterable is empty: the PTQ algorithms need at least one batch"
        )
    return batches


def call_model(model: nn.Module, batch: Batch) -> Any:
    args, kwargs = batch
    try:
        return model(*args, **kwargs)
    except (_Stop, _BadInput):
        raise
    except (TypeError, RuntimeError, ValueError) as exc:
        raise CalibrationError(f"the model failed on a calibration batch: {exc}") from exc


def layer_inputs(
    model: nn.Module, modules: Sequence[nn.Module], batch: Batch
) -> list[torch.Tensor | None]:
    """First input of each of ``modules`` for ``batch`` (None for a module never reached).

    The forward stops once every module has been reached. A module called twice keeps the
    input of its first call.
    """
    found: dict[int, torch.Tensor] = {}
    wanted = {id(m) for m in modules}

    def hook(module: nn.Module, args: tuple) -> None:
        if id(module) not in found and args and isinstance(args[0], torch.Tensor):
            found[id(module)] = args[0].detach()
            _check_finite_input(model, module, found[id(module)])
        if len(found) == len(wanted):
            raise _Stop

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        with torch.no_grad():
            call_model(model, batch)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return [found.get(id(m)) for m in modules]


def _check_finite_input(model: nn.Module, module: nn.Module, x: torch.Tensor) -> None:
    """NaN/Inf inputs would reach the algorithms' solvers (GPTQ's Cholesky, AWQ's search) and
    fail there, far from the cause, or pass silently (AdaRound): stop here, naming the layer."""
    if not x.is_floating_point() or bool(torch.isfinite(x).all()):
        return
    name = next((n for n, m in model.named_modules() if m is module), type(module).__name__)
    n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    raise _BadInput(
        f"the input of layer {name!r} has {n_nan} NaN and {n_inf} Inf values on a calibration "
        "batch; check the calibration data, and the layers before this one (an overflow or a "
        "division by zero)"
    )


class _BadInput(CalibrationError):
    """Non-finite calibration activations (passed through ``call_model`` unchanged)."""


def execution_order(
    model: nn.Module, names: Sequence[str], batch: Batch
) -> list[tuple[str, tuple[int, tuple[int, ...]]]]:
    """``[(name, input_key)]`` in the order the layers first run on ``batch``; ``input_key``
    (storage address and shape) is equal for layers that read the very same tensor."""
    order: list[tuple[str, tuple[int, tuple[int, ...]]]] = []
    seen: set[str] = set()
    alive: list[torch.Tensor] = []  # no freed input's memory may be reused (equal keys = same data)

    def hook_for(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            if name not in seen and args and isinstance(args[0], torch.Tensor):
                seen.add(name)
                alive.append(args[0])
                order.append((name, (args[0].data_ptr(), tuple(args[0].shape))))

        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in names if n]
    try:
        with torch.no_grad():
            call_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    return order


def stages(model: nn.Module, layers: dict[str, nn.Module], batch: Batch) -> list[list[str]]:
    """Layer names in execution order, grouped when consecutive layers read the same tensor
    (one capture serves them all). A module registered under two names appears once."""
    groups: list[list[str]] = []
    last_key, seen = None, set()
    for name, key in execution_order(model, list(layers), batch):
        if id(layers[name]) in seen:
            continue
        seen.add(id(layers[name]))
        if groups and key == last_key:
            groups[-1].append(name)
        else:
            groups.append([name])
        last_key = key
    return groups


def run(model: nn.Module, batch: Batch) -> list[torch.Tensor]:
    """The model's floating outputs on ``batch`` (no gradients), flattened to a list."""
    with torch.no_grad():
        return flat_tensors(call_model(model, batch))


def outputs_match(after: list[torch.Tensor], before: list[torch.Tensor], tol: float = 1e-4) -> bool:
    """Same number of tensors, same shapes, each within ``‖a − b‖ ≤ tol · ‖b‖``: how rescaling
    and block chaining prove they reproduce the model's own outputs."""
    return len(after) == len(before) > 0 and all(
        a.shape == b.shape and float((a - b).norm()) <= tol * max(float(b.norm()), 1e-12)
        for a, b in zip(after, before, strict=True)
    )


def flat_tensors(out: Any) -> list[torch.Tensor]:
    """Every floating tensor in a model output (tensor, tuple, list, dict, ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, tuple | list):
        return [t for item in out for t in flat_tensors(item)]
    return []
