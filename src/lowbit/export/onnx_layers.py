"""Export twins of lowbit's quantized layers: same numbers, written with ONNX operators.

:func:`export_twin` turns one quantized layer into a small module whose forward uses the
Functions of :mod:`lowbit.export.onnx_ops`, and says how it will run:

================================  ===========================================================
layer                             ONNX
================================  ===========================================================
Linear, static W8A8               QDQ input (uint8) + ``DequantizeLinear`` weight + ``MatMul``
Linear, static W4A8 (<= 4 bits)   QDQ input (uint8) + ``MatMulNBits`` bits=4
Linear, dynamic W8A8              per-token int8 codes + ``MatMulInteger`` (int8 x int8)
Linear, weight-only <= 4 bits     ``MatMulNBits`` bits=4 (uniform codes, blocks of 16..256)
Linear, other weight-only         ``MatMulNBits`` on the layer's int8 expansion, 4-bit when exact
Conv, static W8A8                 QDQ input + ``DequantizeLinear`` weight + ``Conv``
Conv, <= 4-bit codes              4-bit ``DequantizeLinear`` weight (uint4) + ``Conv``
Conv, dynamic W8A8                ``DynamicQuantizeLinear`` + ``ConvInteger``
Conv, weight-only                 ``DequantizeLinear`` weight + float ``Conv``
Embedding (int8 rows)             ``Gather`` of int8 rows and of their scales
================================  ===========================================================

Anything else (16-bit casts, activations narrower than 8 bits, weights the int8 expansion would
distort) is exported with its dequantized float weights, and the reason is returned. Formats
with codes of at most 4 bits are written with 4-bit codes where an exact 4-bit form exists
(:mod:`lowbit.export.nbits`); where not (NF4, k-means, power-of-two levels; ``MatMulInteger``
and ``ConvInteger``, which take 8-bit weights; ``int8_kernels=True``), the twin says why in
``widened``. ONNX Runtime (1.32) has no int8-activation kernel for 4-bit weights: a W4A8
Linear runs as ``MatMulNBits`` on dequantized activations and a W4A8 conv as a float ``Conv``;
``int8_kernels=True`` keeps their 8-bit codes on the int8 kernels instead (a W8A8-sized file).
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.config import QuantMode
from lowbit.export.nbits import int8_as_nbits, weight_only_nbits
from lowbit.export.onnx_convs import conv_twin
from lowbit.export.onnx_ops import QDQ, DequantizeWeight, DynamicMatMul, MatMulNBits
from lowbit.export.twins import (
    CHOSEN,
    FLOAT,
    ExportTwin,
    int8_codes,
    is_float,
    narrow_format,
    why_not_4bit,
    widened_note,
    x_qparams,
)
from lowbit.nn import CastLayer, QuantConv, QuantEmbedding, QuantLinear, QuantModule

__all__ = ["export_twin", "ExportTwin", "is_float", "FLOAT", "CHOSEN"]


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
        if self.kind.startswith("static"):
            x = QDQ.apply(x, self.x_scale, self.x_zero_point)
        if self.kind == "static":
            w = DequantizeWeight.apply(self.qweight_t, self.w_scale, 1)
            if x.dim() == 2 and self.bias is not None:
                return torch.addmm(self.bias, x, w)  # one Gemm: ONNX Runtime's QGemm
            y = torch.matmul(x, w)
        elif self.kind == "dynamic":
            y = DynamicMatMul.apply(x, self.qweight_t, self.w_scale, self.attrs["per_token"])
        elif self.kind.endswith("nbits"):
            a = self.attrs
            y = MatMulNBits.apply(x, self.packed, self.scales, self.zero_points,
                                  a["k"], self.n, a["bits"], a["block"])  # fmt: skip
        else:
            y = torch.matmul(x, self.weight_t)
        return y if self.bias is None else y + self.bias


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


def _float_linear(mod: QuantModule, reason: str) -> ExportTwin:
    twin = _Linear(mod, "float", weight_t=mod.dequantized_weight().t().contiguous())
    return ExportTwin(twin, f"{FLOAT}: {reason}")


def _nbits_twin(mod: QuantLinear, kind: str, nb: dict, **tensors) -> ExportTwin:
    attrs = nb.pop("attrs")
    twin = _Linear(mod, kind, **nb, **tensors)
    twin.attrs = attrs
    how = f"MatMulNBits ({attrs['bits']}-bit, blocks of {attrs['block']})"
    if kind == "static_nbits":
        return ExportTwin(twin, f"{how} on QDQ uint8 input, float compute ({CHOSEN}: int8)")
    note = widened_note(mod, "MatMulNBits", why_not_4bit(mod)) if attrs["bits"] == 8 else None
    return ExportTwin(twin, how, note)


def _linear(mod: QuantLinear, int8_kernels: bool) -> ExportTwin:
    mode = mod.scheme.mode
    int8 = int8_codes(mod)
    if mode is QuantMode.WEIGHT_ONLY:
        nb = weight_only_nbits(mod, int8)
        if nb is None:
            return _float_linear(mod, "no MatMulNBits layout (in_features not a multiple of 16)")
        return _nbits_twin(mod, "nbits", nb)
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
        note = widened_note(mod, "MatMulInteger", "it takes 8-bit weights")
        return ExportTwin(twin, f"MatMulInteger (dynamic {grain} int8 x int8)", note)
    xq = x_qparams(mod)
    if xq is None:
        return _float_linear(mod, "static activations narrower than 8 bits")
    nb = None if int8_kernels or narrow_format(mod) is None else int8_as_nbits(*int8)
    if nb is not None:
        return _nbits_twin(mod, "static_nbits", nb, x_scale=xq[0], x_zero_point=xq[1])
    twin = _Linear(mod, "static", qweight_t=q_t, w_scale=w_scale, x_scale=xq[0],
                   x_zero_point=xq[1])  # fmt: skip
    why = (f"kept for ONNX Runtime's int8 kernels ({CHOSEN})" if int8_kernels
           else "no MatMulNBits layout (in_features not a multiple of 16)"
           if mod.in_features % 16 else why_not_4bit(mod))  # fmt: skip
    return ExportTwin(twin, "QDQ MatMul (uint8 x int8)", widened_note(mod, "QDQ weights", why))


def _embedding(mod: QuantEmbedding) -> ExportTwin:
    if mod.scheme.mode is not QuantMode.CAST:
        int8 = int8_codes(mod)
        if int8 is not None:
            note = widened_note(mod, "Gather rows", "the rows are gathered as int8")
            twin = _Embedding(int8[0], int8[1].reshape(-1, 1))
            return ExportTwin(twin, "Gather int8 rows x row scales", note)
    why = "16-bit table kept as float32" if mod.scheme.mode is QuantMode.CAST else "no int8 rows"
    return ExportTwin(_Embedding(None, None, mod.dequantized_weight()), f"{FLOAT}: {why}")


def export_twin(mod: QuantModule, int8_kernels: bool = False) -> ExportTwin:
    """The ONNX-exportable module for ``mod``, how it runs (``"float: why"`` if in float), why
    its codes are stored wider than its format's (if they are) and its 4-bit buffers.

    ``int8_kernels``: static layers with <= 4-bit codes keep 8-bit codes on ONNX Runtime's int8
    kernels (``QGemm``, ``QLinearConv``) instead of 4-bit codes on its float/4-bit ones.
    """
    if isinstance(mod, QuantLinear):
        return _linear(mod, int8_kernels)
    if isinstance(mod, QuantConv):
        return conv_twin(mod, int8_kernels)
    if isinstance(mod, QuantEmbedding):
        return _embedding(mod)
    if isinstance(mod, CastLayer):
        return _cast(mod)
    raise TypeError(f"no ONNX export for {type(mod).__name__}")


def _cast(mod: CastLayer) -> ExportTwin:
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
    why = f"{mod.scheme.compute_dtype} values stored as float32 (no 16-bit export)"
    return ExportTwin(twin, f"{FLOAT}: {why}")
