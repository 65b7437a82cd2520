"""``lowbit.export_onnx``: a model quantized by lowbit as an ONNX file ONNX Runtime runs in int8.

>>> path = lowbit.export_onnx(qmodel, "model.onnx", example)  # doctest: +SKIP

Every quantized layer is replaced, in a copy of the model, by its export twin
(:mod:`lowbit.export.onnx_layers`), and the copy is traced by torch's TorchScript ONNX exporter
(opset 17, dynamic batch axis). Static convolutions then get their outputs quantized
(:mod:`lowbit.export.requant`) so that ONNX Runtime fuses them into ``QLinearConv``. The result
lists how each layer runs, and which ones were exported in float and why.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lowbit.errors import ConfigError, LowbitError
from lowbit.export.onnx_layers import export_twin, is_float
from lowbit.nn import QuantModule
from lowbit.transforms.bn_fold import _set

__all__ = ["export_onnx", "OnnxExport", "ExportError", "OPSET"]

OPSET = 17


class ExportError(LowbitError):
    """The model could not be written as ONNX (the message says which step failed)."""


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote: the file, its size, and how every quantized layer runs."""

    path: Path
    layers: dict[str, str] = field(default_factory=dict)
    requantized: list[str] = field(default_factory=list)

    @property
    def float_layers(self) -> dict[str, str]:
        """Quantized layers exported with float weights, with the reason."""
        return {k: v for k, v in self.layers.items() if is_float(v)}

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def _as_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list | tuple) and example_inputs:
        return tuple(example_inputs)
    raise ConfigError(
        "example_inputs must be a tensor or a non-empty tuple of tensors shaped like one batch, "
        f"got {type(example_inputs).__name__}"
    )


@contextmanager
def _swapped(model: nn.Module):
    """``model`` with each quantized layer swapped for its export twin, restored on exit.

    Swapping in place (not on a deep copy): prepacked oneDNN weights cannot be copied. A bare
    quantized layer (the model *is* the layer) has no parent to swap it in: its twin is exported
    instead, under the root's name ``""``, and the layer itself is left untouched.
    """
    if isinstance(model, QuantModule):
        twin, how = export_twin(model)
        yield twin.eval(), {"": how}
        return
    swapped, layers = [], {}
    was_training = model.training
    try:
        for name, mod in list(model.named_modules()):
            if isinstance(mod, QuantModule):
                replacement, how = export_twin(mod)
                layers[name] = how
                _set(model, name, replacement)
                swapped.append((name, mod))
        yield model.eval(), layers
    finally:
        for name, mod in swapped:
            _set(model, name, mod)
        model.train(was_training)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    calibration: Iterable | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    requantize_conv_outputs: bool = True,
    quantize_outputs: bool = False,
) -> OnnxExport:
    """Write ``model`` (quantized by lowbit, or float) to ``path`` as ONNX.

    ``example_inputs``: one batch (a tensor or a tuple of the forward's positional tensors).
    ``calibration``: batches to measure the ranges of static conv outputs on, which ONNX Runtime
    needs to run those convs as ``QLinearConv`` (default: ``example_inputs`` alone, with a
    warning that one batch is a thin sample). ``dynamic_axes``: torch's ``{name: {axis: label}}``
    (default: the batch axis of every input and output, if ``dynamic_batch``). The file is
    written atomically: an existing file at ``path`` is replaced only by a complete export.

    Model outputs stay float, as in lowbit's PyTorch model, so regression heads, embeddings and
    inputs beyond the calibration range are not clamped. ``quantize_outputs=True`` is for
    classifiers only: the logits are quantized too (uint8 on their calibrated range), so ONNX
    Runtime runs the last ``Gemm`` as ``QGemm`` with integer output; a little faster, but logits
    outside the calibration range clamp (at most 256 distinct values).
    """
    args = _as_tuple(example_inputs)
    path = Path(path)
    if path.suffix != ".onnx":
        raise ConfigError(f"ONNX files end in .onnx, got {str(path)!r}")
    n_in = len(args)
    input_names = list(input_names or [f"input_{i}" if n_in > 1 else "input" for i in range(n_in)])
    output_names = list(output_names or ["output"])
    axes = dynamic_axes
    if axes is None and dynamic_batch:
        axes = {n: {0: "batch"} for n in (*input_names, *output_names)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with _swapped(model) as (twin, layers):
            _torch_export(twin, args, tmp, input_names, output_names, axes, layers)
        requantized: list[str] = []
        if requantize_conv_outputs and any(v.startswith("QDQ") for v in layers.values()):
            from lowbit.export.requant import requantize_conv_outputs as _requant

            batches = _calibration_feeds(calibration, args, input_names)
            requantized = _requant(tmp, batches, quantize_outputs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return OnnxExport(path, layers, requantized)


def _custom_opsets(layers: dict[str, str]) -> dict[str, int]:
    return {"com.microsoft": 1} if any("MatMulNBits" in how for how in layers.values()) else {}


def _torch_export(twin, args, tmp, input_names, output_names, axes, layers) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is deprecated in torch 2.9+ but still the one that exports
        # autograd Functions with ONNX symbolics; torch is pinned (2.13)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        try:
            torch.onnx.export(
                twin, args, tmp, dynamo=False, opset_version=OPSET, input_names=input_names,
                output_names=output_names, dynamic_axes=axes, do_constant_folding=True,
                custom_opsets=_custom_opsets(layers),
            )  # fmt: skip
        except Exception as exc:  # torch raises many types; name the step and keep the cause
            raise ExportError(
                f"torch.onnx.export failed on the model's export copy: {exc}. The model's "
                "forward must take the example inputs positionally and return tensors "
                "(wrap a model that returns dicts or dataclasses)."
            ) from exc


def _calibration_feeds(calibration, args, input_names) -> list[dict]:
    if calibration is None:
        warnings.warn(
            "export_onnx: conv output ranges measured on the example batch only; pass "
            "calibration=[batches...] for ranges that hold on other inputs",
            UserWarning,
            stacklevel=3,
        )
        calibration = [args]
    feeds = []
    for batch in calibration:
        batch = _as_tuple(batch)
        if len(batch) != len(input_names):
            raise ConfigError(
                f"a calibration batch has {len(batch)} tensors, the model takes {len(input_names)}"
            )
        feeds.append({n: t.detach().cpu().numpy() for n, t in zip(input_names, batch, strict=True)})
    if not feeds:
        raise ConfigError("calibration is empty: give at least one batch")
    return feeds
