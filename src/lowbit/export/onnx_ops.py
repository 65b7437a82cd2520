"""lowbit's quantized arithmetic as ONNX operators: autograd Functions with ONNX symbolics.

Each Function's ``forward`` computes, in float, what the ONNX operators it exports compute (so the
traced graph has the right shapes and dtypes); its ``symbolic`` emits the operators:

* :class:`QDQ`: static activation codes, ``QuantizeLinear`` → ``DequantizeLinear`` (uint8, per
  tensor): ``x̂ = (clamp(round(x / s) + z, 0, 255) - z) * s``. ONNX Runtime fuses a QDQ input, a
  ``DequantizeLinear`` weight and the ``MatMul``/``Conv`` into integer kernels
  (``MatMulIntegerToFloat``, ``QLinearConv`` when the output is quantized too).
* :class:`DequantizeWeight`: int8 codes with one scale per channel, ``w = q * s[axis]``.
* :class:`DequantizeCodes`: unsigned codes with a zero point and a scale per channel,
  ``w = (q - z[axis]) * s[axis]`` (uint8 here; :mod:`lowbit.export.int4` stores them as uint4).
* :class:`DynamicMatMul`: per-token (or per-tensor) symmetric int8 activations computed at run
  time, ``s_m = max|x_m| / 127``, ``q = round(x / s_m)``, then ``MatMulInteger`` (int8 x int8 →
  int32) and ``y = acc * s_m * s_w``: lowbit's dynamic kernel, op for op.
* :class:`DynamicConv`: asymmetric uint8 per input tensor (``DynamicQuantizeLinear``, the same
  range rule as lowbit's dynamic convs), ``ConvInteger``, then ``acc * s_x * s_w[c] + b``.
* :class:`MatMulNBits`: ONNX Runtime's block-wise 4/8-bit weight-only ``MatMulNBits``
  (``com.microsoft``): ``w = (q - z) * s`` per block of ``block_size`` input features.
"""

from __future__ import annotations

import torch
from torch.onnx import TensorProtoDataType as _DType

__all__ = [
    "QDQ",
    "DequantizeWeight",
    "DequantizeCodes",
    "DynamicMatMul",
    "DynamicConv",
    "MatMulNBits",
    "pack_codes",
    "unpack_codes",
]


def _const(g, value: torch.Tensor):
    return g.op("Constant", value_t=value)


class QDQ(torch.autograd.Function):
    """``QuantizeLinear`` → ``DequantizeLinear`` with a uint8 ``zero_point`` (0-d tensors)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point):
        z = zero_point.float()
        return (torch.clamp(torch.round(x / scale) + z, 0, 255) - z) * scale

    @staticmethod
    def symbolic(g, x, scale, zero_point):
        q = g.op("QuantizeLinear", x, scale, zero_point)
        return g.op("DequantizeLinear", q, scale, zero_point)


class DequantizeWeight(torch.autograd.Function):
    """``DequantizeLinear(q, s, 0, axis)``: symmetric int8 codes, one scale per ``axis`` slice."""

    @staticmethod
    def forward(ctx, q, scale, axis: int):
        shape = [1] * q.dim()
        shape[axis] = -1
        return q.float() * scale.reshape(shape)

    @staticmethod
    def symbolic(g, q, scale, axis):
        n = q.type().sizes()[axis]
        zero = _const(g, torch.zeros(n, dtype=torch.int8))
        return g.op("DequantizeLinear", q, scale, zero, axis_i=axis)


class DequantizeCodes(torch.autograd.Function):
    """``DequantizeLinear(q, s, z, axis)`` on uint8 codes with a uint8 zero point per channel."""

    @staticmethod
    def forward(ctx, q, scale, zero_point, axis: int):
        shape = [1] * q.dim()
        shape[axis] = -1
        return (q.float() - zero_point.float().reshape(shape)) * scale.reshape(shape)

    @staticmethod
    def symbolic(g, q, scale, zero_point, axis):
        return g.op("DequantizeLinear", q, scale, zero_point, axis_i=axis)


class DynamicMatMul(torch.autograd.Function):
    """``x @ W^T`` with int8 activations quantized from ``x`` itself; ``qweight_t`` is ``[K, N]``."""

    @staticmethod
    def forward(ctx, x, qweight_t, w_scale, per_token: bool):
        dims = (-1,) if per_token else tuple(range(x.dim()))
        s = x.abs().amax(dim=dims, keepdim=True).clamp(min=1e-12) / 127.0
        q = torch.round(x / s)
        return (q @ qweight_t.float()) * s * w_scale

    @staticmethod
    def symbolic(g, x, qweight_t, w_scale, per_token):
        amax = (
            g.op("ReduceMax", g.op("Abs", x), axes_i=[-1], keepdims_i=1)
            if per_token
            else g.op("ReduceMax", g.op("Abs", x), keepdims_i=0)
        )
        tiny = _const(g, torch.tensor(1e-12))
        s = g.op("Div", g.op("Max", amax, tiny), _const(g, torch.tensor(127.0)))
        # codes + 128 as uint8 with zero point 128: the same integers, on ONNX Runtime's fast
        # u8 x s8 kernel (its s8 x s8 MatMulInteger is ~15x slower on x86, measured)
        q = g.op("Cast", g.op("Add", g.op("Round", g.op("Div", x, s)), _const(g, torch.tensor(128.0))),
                 to_i=_DType.UINT8)  # fmt: skip
        acc = g.op("MatMulInteger", q, qweight_t, _const(g, torch.tensor(128, dtype=torch.uint8)))
        y = g.op("Mul", g.op("Cast", acc, to_i=_DType.FLOAT), s)
        return g.op("Mul", y, w_scale)


class DynamicConv(torch.autograd.Function):
    """Convolution of uint8 activations (range from the input) with int8 per-channel weights."""

    @staticmethod
    def forward(ctx, x, qweight, w_scale, bias, stride, padding, dilation, groups):
        lo = torch.clamp(x.amin(), max=0.0)
        hi = torch.clamp(x.amax(), min=0.0)
        s = torch.clamp((hi - lo) / 255.0, min=1e-12)
        z = torch.clamp(torch.round(-lo / s), 0, 255)
        xd = (torch.clamp(torch.round(x / s) + z, 0, 255) - z) * s
        conv = torch.nn.functional.conv1d if x.dim() == 3 else torch.nn.functional.conv2d
        w = qweight.float() * w_scale.reshape(-1, *[1] * (qweight.dim() - 1))
        return conv(xd, w, bias, stride, padding, dilation, groups)

    @staticmethod
    def symbolic(g, x, qweight, w_scale, bias, stride, padding, dilation, groups):
        q, s, z = g.op("DynamicQuantizeLinear", x, outputs=3)
        acc = g.op("ConvInteger", q, qweight, z, strides_i=list(stride),
                   pads_i=list(padding) * 2, dilations_i=list(dilation), group_i=groups)  # fmt: skip
        n_spatial = len(stride)
        scale = g.op("Mul", s, w_scale)  # [C_out]
        shape = _const(g, torch.tensor([1, -1] + [1] * n_spatial, dtype=torch.int64))
        y = g.op("Mul", g.op("Cast", acc, to_i=_DType.FLOAT), g.op("Reshape", scale, shape))
        return g.op("Add", y, g.op("Reshape", bias, shape))


class MatMulNBits(torch.autograd.Function):
    """ONNX Runtime's ``MatMulNBits``: ``x @ W^T`` with ``W`` in blocks of packed codes.

    ``packed``: ``[N, K / block, block * bits / 8]`` uint8 (4-bit: low nibble first);
    ``scales``: ``[N * K / block]`` float; ``zero_points``: uint8, packed like the codes.
    """

    @staticmethod
    def forward(ctx, x, packed, scales, zero_points, k, n, bits, block):
        q = unpack_codes(packed.reshape(n, -1), bits)[:, :k].float()
        z = unpack_codes(zero_points.reshape(n, -1), bits)[:, : k // block].float()
        w = (q - z.repeat_interleave(block, dim=1)) * scales.reshape(n, -1).repeat_interleave(
            block, dim=1
        )
        return x @ w.t()

    @staticmethod
    def symbolic(g, x, packed, scales, zero_points, k, n, bits, block):
        y = g.op("com.microsoft::MatMulNBits", x, packed, scales, zero_points,
                 K_i=k, N_i=n, bits_i=bits, block_size_i=block)  # fmt: skip
        sizes = x.type().varyingSizes()
        if sizes is not None:  # tell the exporter's shape inference (it has no rule for this op)
            y.setType(x.type().with_sizes([*sizes[:-1], n]))
        return y


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Rows of unsigned codes ``[R, C]`` into bytes, ``8 / bits`` per byte, first code lowest.

    >>> pack_codes(torch.tensor([[1, 2, 3]]), 4).tolist()
    [[33, 3]]
    """
    if bits == 8:
        return codes.to(torch.uint8)
    per = 8 // bits
    c = codes.to(torch.int32)
    pad = (-c.shape[1]) % per
    c = torch.nn.functional.pad(c, (0, pad)).reshape(c.shape[0], -1, per)
    shifts = torch.arange(per, dtype=torch.int32) * bits
    return (c << shifts).sum(dim=-1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes` (padding codes included)."""
    if bits == 8:
        return packed.to(torch.int32)
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.int32) * bits
    c = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return c.reshape(packed.shape[0], -1)
