"""What every export twin shares: its record (:class:`ExportTwin`), the int8 codes and input
grid it is built from, and the notes for layers stored wider than their format."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from lowbit.formats import IntFormat
from lowbit.nn import QuantConv, QuantLinear, QuantModule
from lowbit.nn.base import EXPANSION_MIN_SQNR_DB

__all__ = ["ExportTwin", "FLOAT", "CHOSEN", "is_float", "int8_codes", "x_qparams",
           "narrow_format", "widened_note", "why_not_4bit"]  # fmt: skip

FLOAT = "float"  # prefix of the "how" of layers exported with float weights
CHOSEN = "int8_kernels=True"  # in the widened note of layers the caller asked to keep 8-bit


class ExportTwin(NamedTuple):
    """A layer's export module, how it runs, why its codes are wider than its format's (if
    they are), and its code buffers to store as 4-bit tensors (uint8 in the module; their
    ``DequantizeLinear`` zero points follow, :func:`lowbit.export.int4.store_uint4`)."""

    module: nn.Module
    how: str
    widened: str | None = None
    uint4: tuple[str, ...] = ()


def is_float(how: str) -> bool:
    """Whether an export "how" string means the layer runs with float weights."""
    return how.startswith(FLOAT)


def int8_codes(mod: QuantModule) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Symmetric int8 codes with ``[out]`` scales, when the layer's expansion is faithful."""
    int8 = mod.int8_weight()
    if int8 is None or int8.sqnr_db < EXPANSION_MIN_SQNR_DB:
        return None
    return int8.q, int8.scale.float()


def x_qparams(mod: QuantLinear | QuantConv) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The calibrated input grid as uint8 ``(scale, zero_point)``, if it is a full 8-bit grid."""
    c = mod._codes
    if (c.qmin + 128, c.qmax + 128) != (0, 255):
        return None  # narrower grids would need a Clip the QDQ fusions do not take
    return torch.tensor(c.scale), torch.tensor(c.zero_point + 128, dtype=torch.uint8)


def narrow_format(mod: QuantModule) -> str | None:
    """The weight format's name when its codes have at most 4 bits (``"int4"``, ``"nf4"``)."""
    spec = mod.scheme.weight
    fmt = None if spec is None else spec.number_format
    return str(fmt) if getattr(fmt, "bits", 16) <= 4 else None


def widened_note(mod: QuantModule, where: str, why: str) -> str | None:
    """``"nf4 codes stored as 8-bit MatMulNBits: why"`` for formats of <= 4 bits, else None."""
    fmt = narrow_format(mod)
    return None if fmt is None else f"{fmt} codes stored as 8-bit {where}: {why}"


def why_not_4bit(mod: QuantModule) -> str:
    """Why a format of <= 4 bits has no exact 4-bit form in the export (see
    :mod:`lowbit.export.nbits`)."""
    if isinstance(mod.scheme.weight.number_format, IntFormat):
        return "its groups or zero points have no 4-bit ONNX layout here"
    return "its levels are not evenly spaced, and ONNX has no 4-bit lookup op"
