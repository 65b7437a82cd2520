"""``lowbit.export_onnx``: a model quantized by lowbit as an ONNX file ONNX Runtime runs in int8.

>>> path = lowbit.export_onnx(qmodel, "model.onnx", example)  # doctest: +SKIP

Every quantized layer is replaced, in a copy of the model, by its export twin
(:mod:`lowbit.export.onnx_layers`), and the copy is traced by torch's TorchScript ONNX exporter
(opset 17, dynamic batch axis). Static convolutions then get their outputs quantized
(:mod:`lowbit.export.requant`) so that ONNX Runtime fuses them into ``QLinearConv``, and 4-bit
conv codes are stored as uint4 (:mod:`lowbit.export.int4`, opset 21). The result lists how each
layer runs, which ones were exported in float and why, and which keep 8-bit codes and why.
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
from lowbit.export.twins import CHOSEN
from lowbit.nn import QuantModule
from lowbit.transforms.bn_fold import _set

__all__ = ["export_onnx", "OnnxExport", "ExportError", "OPSET"]

OPSET = 17


class ExportError(LowbitError):
    """The model could not be written as ONNX (the message says which step failed)."""


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote: the file, its size, and how every quantized layer runs.

    ``widened_layers``: layers whose format has codes of at most 4 bits but whose weights are
    stored with 8-bit codes, and why (``{"fc1": "nf4 codes stored as 8-bit MatMulNBits: ..."}``).
    """

    path: Path
    layers: dict[str, str] = field(default_factory=dict)
    requantized: list[str] = field(default_factory=list)
    widened_layers: dict[str, str] = field(default_factory=dict)

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
def _swapped(model: nn.Module, int8_kernels: bool):
    """``model`` with each quantized layer swapped for its export twin, restored on exit;
    yields it with ``{layer name: ExportTwin}``.

    Swapping in place (not on a deep copy): prepacked oneDNN weights cannot be copied. A bare
    quantized layer (the model *is* the layer) has no parent to swap it in: its twin is exported
    instead, under the root's name ``""``, and the layer itself is left untouched.
    """
    if isinstance(model, QuantModule):
        twin = export_twin(model, int8_kernels)
        yield twin.module.eval(), {"": twin}
        return
    swapped, twins = [], {}
    was_training = model.training
    try:
        for name, mod in list(model.named_modules()):
            if isinstance(mod, QuantModule):
                twins[name] = export_twin(mod, int8_kernels)
                _set(model, name, twins[name].module)
                swapped.append((name, mod))
        yield model.eval(), twins
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
    int8_kernels: bool = False,
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

    Weights of formats with codes of at most 4 bits are stored with 4-bit codes where an exact
    4-bit form exists (``MatMulNBits`` bits=4; uint4 ``DequantizeLinear`` at opset 21 for
    convs); the others (NF4, k-means, power-of-two levels, dynamic W4A8) keep 8-bit codes and
    are listed in ``widened_layers``, with a warning. ONNX Runtime has no int8-activation kernel
    for 4-bit weights, so W4A8 layers run several times slower than W8A8 there (Linear on
    ``MatMulNBits``, convs on float ``Conv``: 6-12x measured in ONNX Runtime 1.32);
    ``int8_kernels=True`` stores their codes in 8 bits instead, on the int8 kernels
    (``QGemm``, ``QLinearConv``): W8A8 speed, W8A8 file size.
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
        with _swapped(model, int8_kernels) as (twin, twins):
            layers = {name: t.how for name, t in twins.items()}
            _torch_export(twin, args, tmp, input_names, output_names, axes, layers)
        requantized: list[str] = []
        if requantize_conv_outputs and any(v.startswith("QDQ") for v in layers.values()):
            from lowbit.export.requant import requantize_conv_outputs as _requant

            batches = _calibration_feeds(calibration, args, input_names)
            requantized = _requant(tmp, batches, quantize_outputs)
        widened = _store_4bit(tmp, twins, layers)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _warn_widened(widened)
    return OnnxExport(path, layers, requantized, widened)


def _store_4bit(tmp: str, twins: dict, layers: dict[str, str]) -> dict[str, str]:
    """4-bit tensors where the twins have them (:mod:`lowbit.export.int4`); ``{layer: note}``
    of the layers whose codes stay 8-bit, with ``layers`` updated where that changed."""
    widened = {name: t.widened for name, t in twins.items() if t.widened}
    names = [f"{name}.{b}" if name else b for name, t in twins.items() for b in t.uint4]
    if not names:
        return widened
    from lowbit.export.int4 import store_uint4

    try:
        store_uint4(tmp, names)
    except Exception as exc:  # noqa: BLE001 - onnx's converter raises many types; keep uint8
        for name, t in twins.items():
            if t.uint4:
                widened[name] = (
                    f"4-bit codes stored as uint8: opset-21 uint4 rewrite failed ({exc})"
                )
                layers[name] = t.how.replace("4-bit DequantizeLinear", "uint8 DequantizeLinear")
    return widened


def _warn_widened(widened: dict[str, str]) -> None:
    """One warning for the layers stored wider than their format that the caller did not ask
    for (``int8_kernels=True`` is asking)."""
    unasked = {k: v for k, v in widened.items() if CHOSEN not in v}
    if unasked:
        listed = "; ".join(f"{k or '<model>'}: {v}" for k, v in list(unasked.items())[:4])
        more = f" and {len(unasked) - 4} more" if len(unasked) > 4 else ""
        warnings.warn(
            f"export_onnx: {len(unasked)} layer(s) keep 8-bit codes in the ONNX file although "
            f"their format has fewer bits ({listed}{more}); see OnnxExport.widened_layers",
            UserWarning,
            stacklevel=3,
        )


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
