"""Export twins of lowbit's quantized convolutions (see :mod:`lowbit.export.onnx_layers`).

Static convs become QDQ input + ``DequantizeLinear`` weight + ``Conv`` (ONNX Runtime's
``QLinearConv`` once the output is quantized too), dynamic ones ``ConvInteger``, weight-only
ones a float ``Conv`` on dequantized weights. Codes of at most 4 bits are written as 4-bit
``DequantizeLinear`` weights where they have an exact 4-bit form (uint8 in the twin, uint4 in
the file: :mod:`lowbit.export.int4`); ONNX Runtime then runs a float ``Conv``, as it has no
4-bit conv kernel, so ``int8_kernels=True`` keeps static convs on 8-bit codes (``QLinearConv``).
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.config import QuantMode
from lowbit.export.nbits import channel_codes
from lowbit.export.onnx_ops import QDQ, DequantizeCodes, DequantizeWeight, DynamicConv
from lowbit.export.twins import (
    CHOSEN,
    FLOAT,
    ExportTwin,
    int8_codes,
    narrow_format,
    why_not_4bit,
    widened_note,
    x_qparams,
)
from lowbit.kernels.reference import CONV_FN
from lowbit.nn import QuantConv

__all__ = ["conv_twin"]


class _Conv(nn.Module):
    def __init__(self, mod: QuantConv, kind: str, **tensors: torch.Tensor | None):
        super().__init__()
        self.kind, self.dims, self.four_bit = kind, mod.dims, "qcodes" in tensors
        self.args = (tuple(mod.stride), tuple(mod.padding), tuple(mod.dilation), mod.groups)
        bias = mod.bias if mod.bias is not None else torch.zeros(mod.out_channels)
        for name, t in {**tensors, "bias": bias}.items():
            self.register_buffer(name, t.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "dynamic":
            return DynamicConv.apply(x, self.qweight, self.w_scale, self.bias, *self.args)
        if self.kind == "float":
            w = self.weight
        elif self.four_bit:
            w = DequantizeCodes.apply(self.qcodes, self.w_scale, self.w_zero, 0)
        else:
            w = DequantizeWeight.apply(self.qweight, self.w_scale, 0)
        if self.kind == "static":
            x = QDQ.apply(x, self.x_scale, self.x_zero_point)
        return CONV_FN[self.dims](x, w, self.bias, *self.args)


def _float(mod: QuantConv, why: str) -> ExportTwin:
    return ExportTwin(_Conv(mod, "float", weight=mod.dequantized_weight()), f"{FLOAT}: {why}")


def conv_twin(mod: QuantConv, int8_kernels: bool) -> ExportTwin:
    """The export twin of a quantized conv (see the module docstring)."""
    mode, x = mod.scheme.mode, {}
    if mode is QuantMode.STATIC:
        xq = x_qparams(mod)
        if xq is None:
            return _float(mod, "static activations narrower than 8 bits")
        x = {"x_scale": xq[0], "x_zero_point": xq[1]}
    int8 = int8_codes(mod)
    keep8 = mode is QuantMode.DYNAMIC or (int8_kernels and bool(x))
    codes = None if keep8 or narrow_format(mod) is None else channel_codes(mod, int8)
    kind = "static" if x else "dynamic" if mode is QuantMode.DYNAMIC else "weight_only"
    if codes is not None:
        why = "no 4-bit conv kernel" + (f"; {CHOSEN} keeps QLinearConv" if x else "")
        how = f"{FLOAT}: Conv on 4-bit DequantizeLinear weights (ONNX Runtime has {why})"
        return ExportTwin(_Conv(mod, kind, **codes, **x), how, None, ("qcodes",))
    if int8 is None:
        return _float(mod, "weights are not int8 with one scale per output channel")
    twin = _Conv(mod, kind, qweight=int8[0], w_scale=int8[1], **x)
    if kind == "dynamic":
        note = widened_note(mod, "ConvInteger weights", "it takes 8-bit weights")
        return ExportTwin(twin, "ConvInteger (dynamic uint8 x int8)", note)
    why = f"kept for QLinearConv ({CHOSEN})" if keep8 else why_not_4bit(mod)
    note = widened_note(mod, "DequantizeLinear weights", why)
    if x:
        return ExportTwin(twin, "QDQ Conv (uint8 x int8)", note)
    why = "ONNX Runtime has no weight-only int8 conv"
    return ExportTwin(twin, f"{FLOAT}: Conv on DequantizeLinear weights ({why})", note)
