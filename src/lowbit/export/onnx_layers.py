"""Export twins of lowbit's quantized layers: same numbers, written with ONNX operators.

:func:`export_twin` turns one quantized layer into a small module whose forward uses the
Functions of :mod:`lowbit.export.onnx_ops`, and says how it will run:

================================  ===========================================================
layer                             ONNX
================================  ===========================================================
Linear, static W8A8               QDQ input (uint8) + ``DequantizeLinear`` weight + ``MatMul``
Linear, dynamic W8A8              per-token int8 codes + ``MatMulInteger`` (int8 x int8)
Linear, weight-only <= 4 bits     ``MatMulNBits`` bits=4 (uniform codes, blocks of 16..256)
Linear, other weight-only         ``MatMulNBits`` bits=8 on the layer's int8 expansion
Conv, static W8A8                 QDQ input + ``DequantizeLinear`` weight + ``Conv``
Conv, dynamic W8A8                ``DynamicQuantizeLinear`` + ``ConvInteger``
Conv, weight-only                 ``DequantizeLinear`` weight + float ``Conv``
Embedding (int8 rows)             ``Gather`` of int8 rows and of their scales
================================  ===========================================================

Anything else (16-bit casts, activations narrower than 8 bits, weights the int8 expansion would
distort) is exported with its dequantized float weights, and the reason is returned.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.config import QuantMode
from lowbit.export.onnx_ops import (
    QDQ,
    DequantizeWeight,
    DynamicConv,
    DynamicMatMul,
    MatMulNBits,
    pack_codes,
)
from lowbit.formats import IntFormat
from lowbit.granularity import GranularityKind
from lowbit.kernels.reference import CONV_FN
from lowbit.nn import CastLayer, QuantConv, QuantEmbedding, QuantLinear, QuantModule
from lowbit.nn.base import EXPANSION_MIN_SQNR_DB

__all__ = ["export_twin", "is_float", "FLOAT"]

FLOAT = "float"  # prefix of the "how" of layers exported with float weights
_BLOCKS = (256, 128, 64, 32, 16)  # MatMulNBits block sizes (powers of two >= 16)


class _Linear(nn.Module):
    """``y = f(x * smooth) + b`` with ``f`` one of the ONNX matmul forms."""

    def __init__(self, mod: QuantLinear, kind: str, **tensors: torch.Tensor | None):
        super().__init__()
        self.kind, self.n = kind, mod.out_features
        self.attrs: dict = {}
        for name, t in {**tensors, "bias": mod.bias, "smooth": mod.input_smooth}.items():
            self.register_buffer(name, None if t is None else t.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:
            x = x * self.smooth
        if self.kind == "static":
            xd = QDQ.apply(x, self.x_scale, self.x_zero_point)
            w = DequantizeWeight.apply(self.qweight_t, self.w_scale, 1)
            if x.dim() == 2 and self.bias is not None:
                return torch.addmm(self.bias, xd, w)  # one Gemm: ONNX Runtime's QGemm
            y = torch.matmul(xd, w)
        elif self.kind == "dynamic":
            y = DynamicMatMul.apply(x, self.qweight_t, self.w_scale, self.attrs["per_token"])
        elif self.kind == "nbits":
            a = self.attrs
            y = MatMulNBits.apply(x, self.packed, self.scales, self.zero_points,
                                  a["k"], self.n, a["bits"], a["block"])  # fmt: skip
        else:
            y = torch.matmul(x, self.weight_t)
        return y if self.bias is None else y + self.bias


class _Conv(nn.Module):
    def __init__(self, mod: QuantConv, kind: str, **tensors: torch.Tensor | None):
        super().__init__()
        self.kind, self.dims = kind, mod.dims
        self.args = (tuple(mod.stride), tuple(mod.padding), tuple(mod.dilation), mod.groups)
        bias = mod.bias if mod.bias is not None else torch.zeros(mod.out_channels)
        for name, t in {**tensors, "bias": bias}.items():
            self.register_buffer(name, t.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "dynamic":
            return DynamicConv.apply(x, self.qweight, self.w_scale, self.bias, *self.args)
        if self.kind == "float":
            w = self.weight
        else:
            w = DequantizeWeight.apply(self.qweight, self.w_scale, 0)
        if self.kind == "static":
            x = QDQ.apply(x, self.x_scale, self.x_zero_point)
        return CONV_FN[self.dims](x, w, self.bias, *self.args)


class _Embedding(nn.Module):
    def __init__(self, qweight: torch.Tensor | None, scale: torch.Tensor | None, weight=None):
        super().__init__()
        self.register_buffer("qweight", qweight)
        self.register_buffer("row_scale", scale)
        self.register_buffer("weight", weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            return nn.functional.embedding(ids, self.weight)
        rows = nn.functional.embedding(ids, self.qweight).float()
        return rows * nn.functional.embedding(ids, self.row_scale)


def _int8(mod: QuantModule) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Symmetric int8 codes with ``[out]`` scales, when the layer's expansion is faithful."""
    int8 = mod.int8_weight()
    if int8 is None or int8.sqnr_db < EXPANSION_MIN_SQNR_DB:
        return None
    return int8.q, int8.scale.float()


def _x_qparams(mod: QuantLinear | QuantConv) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The calibrated input grid as uint8 ``(scale, zero_point)``, if it is a full 8-bit grid."""
    c = mod._codes
    if (c.qmin + 128, c.qmax + 128) != (0, 255):
        return None  # narrower grids would need a Clip the QDQ fusions do not take
    return torch.tensor(c.scale), torch.tensor(c.zero_point + 128, dtype=torch.uint8)


def _nbits(mod: QuantLinear) -> dict | None:
    """``MatMulNBits`` tensors: 4-bit uniform codes, or the 8-bit expansion of other formats."""
    k, fmt = mod.in_features, mod.scheme.weight.number_format
    block = next((b for b in _BLOCKS if k % b == 0), None)
    if block is None:
        return None
    gran = mod.scheme.weight.granularity_value
    if isinstance(fmt, IntFormat) and fmt.bits <= 4 and gran.kind is not GranularityKind.PER_TOKEN:
        if gran.kind is GranularityKind.PER_GROUP:
            block = gran.group_size
            if block not in _BLOCKS or k % block:
                return None
        elif not (gran.kind is GranularityKind.PER_TENSOR or gran.axis == 0):
            return None
        zp = mod._quantized_weight().zero_point
        codes = mod.qweight.to(torch.int32) - fmt.qmin
        zero = (torch.zeros(1) if zp is None else zp.to(torch.int32)) - fmt.qmin
        scale, bits = mod.weight_scale.float(), 4
    else:
        int8 = _int8(mod)
        if int8 is None:
            return None
        codes, zero, scale, bits = int8[0].to(torch.int32) + 128, torch.full((1,), 128), int8[1], 8
    n, blocks = mod.out_features, k // block
    scale = scale.reshape(n, -1).expand(n, blocks) if scale.numel() in (1, n) else scale
    zero = zero.reshape(-1, 1).expand(n, blocks) if zero.numel() in (1, n) else zero
    return {
        "packed": pack_codes(codes, bits).reshape(n, blocks, -1),
        "scales": scale.reshape(n, blocks).reshape(-1).contiguous(),
        "zero_points": pack_codes(zero.reshape(n, blocks), bits),
        "attrs": {"k": k, "bits": bits, "block": block},
    }


def _float_linear(mod: QuantModule, reason: str) -> tuple[nn.Module, str]:
    twin = _Linear(mod, "float", weight_t=mod.dequantized_weight().t().contiguous())
    return twin, f"{FLOAT}: {reason}"


def _linear(mod: QuantLinear) -> tuple[nn.Module, str]:
    mode = mod.scheme.mode
    if mode is QuantMode.WEIGHT_ONLY:
        nb = _nbits(mod)
        if nb is None:
            return _float_linear(mod, "no MatMulNBits layout (in_features not a multiple of 16)")
        attrs = nb.pop("attrs")
        twin = _Linear(mod, "nbits", **nb)
        twin.attrs = attrs
        return twin, f"MatMulNBits ({attrs['bits']}-bit, blocks of {attrs['block']})"
    int8 = _int8(mod)
    if int8 is None:
        return _float_linear(mod, "weights are not int8 with one scale per output channel")
    q_t, w_scale = int8[0].t().contiguous(), int8[1]
    if mode is QuantMode.DYNAMIC:
        act = mod.scheme.activation
        if act.format != "int8" or not act.symmetric:
            return _float_linear(mod, "dynamic activations other than symmetric int8")
        twin = _Linear(mod, "dynamic", qweight_t=q_t, w_scale=w_scale)
        twin.attrs = {"per_token": mod._per_token}
        grain = "per-token" if mod._per_token else "per-tensor"
        return twin, f"MatMulInteger (dynamic {grain} int8 x int8)"
    xq = _x_qparams(mod)
    if xq is None:
        return _float_linear(mod, "static activations narrower than 8 bits")
    twin = _Linear(mod, "static", qweight_t=q_t, w_scale=w_scale, x_scale=xq[0],
                   x_zero_point=xq[1])  # fmt: skip
    return twin, "QDQ MatMul (uint8 x int8)"


def _conv(mod: QuantConv) -> tuple[nn.Module, str]:
    int8 = _int8(mod)
    if int8 is None:
        why = "weights are not int8 with one scale per output channel"
        return _Conv(mod, "float", weight=mod.dequantized_weight()), f"{FLOAT}: {why}"
    q, w_scale = int8
    mode = mod.scheme.mode
    if mode is QuantMode.WEIGHT_ONLY:
        return _Conv(mod, "weight_only", qweight=q, w_scale=w_scale), (
            f"{FLOAT}: Conv on DequantizeLinear weights (ONNX Runtime has no weight-only int8 conv)"
        )
    if mode is QuantMode.DYNAMIC:
        twin = _Conv(mod, "dynamic", qweight=q, w_scale=w_scale)
        return twin, "ConvInteger (dynamic uint8 x int8)"
    xq = _x_qparams(mod)
    if xq is None:
        why = "static activations narrower than 8 bits"
        return _Conv(mod, "float", weight=mod.dequantized_weight()), f"{FLOAT}: {why}"
    twin = _Conv(mod, "static", qweight=q, w_scale=w_scale, x_scale=xq[0], x_zero_point=xq[1])
    return twin, "QDQ Conv (uint8 x int8)"


def _embedding(mod: QuantEmbedding) -> tuple[nn.Module, str]:
    if mod.scheme.mode is not QuantMode.CAST:
        int8 = _int8(mod)
        if int8 is not None:
            return _Embedding(int8[0], int8[1].reshape(-1, 1)), "Gather int8 rows x row scales"
    why = "16-bit table kept as float32" if mod.scheme.mode is QuantMode.CAST else "no int8 rows"
    return _Embedding(None, None, mod.dequantized_weight()), f"{FLOAT}: {why}"


def export_twin(mod: QuantModule) -> tuple[nn.Module, str]:
    """The ONNX-exportable module for ``mod`` and how it runs (``"float: why"`` if in float)."""
    if isinstance(mod, QuantLinear):
        return _linear(mod)
    if isinstance(mod, QuantConv):
        return _conv(mod)
    if isinstance(mod, QuantEmbedding):
        return _embedding(mod)
    if isinstance(mod, CastLayer):
        return _cast(mod)
    raise TypeError(f"no ONNX export for {type(mod).__name__}")


def _cast(mod: CastLayer) -> tuple[nn.Module, str]:
    """16-bit layers: the rounded weights in fp32 (the file keeps fp32; size is not reduced)."""
    w = mod.weight.detach().float()
    b = None if mod.bias is None else mod.bias.detach().float()
    if mod.is_linear:
        twin: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    else:
        stride, padding, dilation, groups = mod.conv_args
        conv = nn.Conv1d if mod.dims == 1 else nn.Conv2d
        twin = conv(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride, padding,
                    dilation, groups, bias=b is not None)  # fmt: skip
    with torch.no_grad():
        twin.weight.copy_(w)
        if b is not None:
            twin.bias.copy_(b)
    return twin, f"{FLOAT}: {mod.scheme.compute_dtype} values stored as float32 (no 16-bit export)"


def is_float(how: str) -> bool:
    """Whether an export "how" string means the layer runs with float weights."""
    return how.startswith(FLOAT)
