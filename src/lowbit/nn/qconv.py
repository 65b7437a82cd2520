"""``QuantConv``: ``nn.Conv1d``/``nn.Conv2d`` (grouped and depthwise too) with int8 weights.

* static / dynamic: activations become uint8 codes with one scale and zero point per input tensor
  (calibrated, or computed from each input: dynamic convs always use an asymmetric 8-bit range,
  whatever the scheme's per-token setting, since a conv has no tokens), and the convolution runs
  on oneDNN's int8 kernel:
  ``y = conv((q_x - z_x) * s_x, q_w * s_w) + b`` with one weight scale per output channel.
* weight-only: there is no fused int8-weight/float-activation convolution in torch, so the weight is
  dequantized on each call and the convolution runs in bf16, or in fp32 on CPUs without native
  bf16 (``kernel`` says so).

>>> conv = nn.Conv2d(3, 8, 3, padding=1)
>>> q = QuantConv.from_float(conv, get_preset("W8A8-dynamic"))
>>> q.qweight.dtype, q(torch.randn(2, 3, 16, 16)).shape
(torch.int8, torch.Size([2, 8, 16, 16]))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from lowbit.config import QuantMode, QuantScheme
from lowbit.kernels import cpu, fused, reference
from lowbit.kernels.reference import CONV_FN
from lowbit.nn import kernel_calls as kc
from lowbit.nn.base import (
    EXPANSION_MIN_SQNR_DB,
    ActivationCodes,
    QuantizedWeight,
    QuantModule,
    check_finite,
    fake_quantize_dynamic,
    placeholder_qparams,
    quantize_weight,
)
from lowbit.nn.kernel_calls import KernelPath
from lowbit.weight_quant import placeholder_weight

__all__ = ["QuantConv"]


class QuantConv(QuantModule):
    """Integer-weight 1-D/2-D convolution; build it with :meth:`from_float`."""

    # oneDNN's prepacked weight (_packed) has no storage: it cannot be copied, only rebuilt
    _derived = ("_fast", "_fp32", "_codes", "_w_scale", "_packed", "_dequant_path")

    def __init__(
        self,
        conv: nn.Conv1d | nn.Conv2d,
        scheme: QuantScheme,
        qweight: QuantizedWeight,
        bias: torch.Tensor | None,
        input_qparams: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("QuantConv takes zero padding given as integers")
        self.scheme, self.dims = scheme, conv.weight.dim() - 2
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self._register_tensors(qweight, bias, input_qparams)
        self._prepare()

    @classmethod
    def from_float(
        cls,
        conv: nn.Conv1d | nn.Conv2d,
        scheme: QuantScheme,
        input_qparams: tuple[torch.Tensor, torch.Tensor] | None = None,
        name: str = "conv",
        qweight: QuantizedWeight | None = None,
    ) -> QuantConv:
        """Quantize ``conv``'s weight (or take ``qweight``, codes chosen by GPTQ/AdaRound)."""
        if conv.bias is not None:
            check_finite(conv.bias, f"{name}.bias")
        if qweight is None:
            qweight = quantize_weight(conv.weight, scheme.weight, f"{name}.weight")
        return cls(conv, scheme, qweight, conv.bias, input_qparams)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], float_module: nn.Conv1d | nn.Conv2d) -> QuantConv:
        """An empty shell shaped like ``float_module``, to be filled by ``load_state_dict``."""
        scheme = QuantScheme.from_dict(spec["scheme"])
        bias = float_module.bias
        if spec.get("has_bias", bias is not None):
            bias = torch.zeros(float_module.out_channels)
        qweight = placeholder_weight(tuple(float_module.weight.shape), scheme.weight)
        return cls(float_module, scheme, qweight, bias, placeholder_qparams(scheme))

    def layer_spec(self) -> dict[str, Any]:
        # BatchNorm folding can give a bias-free conv a bias: record it for the skeleton.
        return {**super().layer_spec(), "has_bias": self.bias is not None}

    def _prepare(self) -> None:
        mode = self.scheme.mode
        self._fast, self._fp32 = True, None
        self._dequant_path = kc.dequant(cpu.dequant_dtype(), "conv")  # forward only picks it
        if mode is QuantMode.WEIGHT_ONLY:
            dt = "bf16" if cpu.native_bf16() else "fp32 (bf16 is not native on this CPU)"
            self.kernel = f"dequantize + {dt} conv (no fused weight-only int8 conv in torch)"
            return
        self.kernel = "onednn.qconv_pointwise (uint8 x int8)"
        act = self.scheme.activation
        if mode is QuantMode.STATIC:
            self._codes = ActivationCodes(act, self.input_scale, self.input_zero_point)
        int8 = self.int8_weight()  # sub-8-bit / non-uniform weights: expanded per channel
        if int8 is None or int8.sqnr_db < EXPANSION_MIN_SQNR_DB or not self._uint8_inputs():
            self._fast = False
            self._fallback("int8 conv takes 8-bit activations and symmetric per-channel weights")
        elif not cpu.has_onednn_qconv():
            self._fast = False
            self._fallback("oneDNN int8 convolution is not in this torch build")
        elif not cpu.onednn_qconv_exact():
            # oneDNN's int8 conv saturates here (no VNNI: its int16 pair sums overflow); an fp32
            # conv on the integer codes costs what the float conv costs, exact while every
            # partial sum stays below 2^24 (checked per layer from the weights)
            self._fast = False
            self._fp32 = cpu.prepare_fp32_conv(int8.q, int8.scale, self._input_range())
            exact = "exact" if self._fp32.exact else "partial sums above 2^24 round in fp32"
            self.kernel = (f"fp32 conv on the int8 codes ({exact}; oneDNN's int8 conv "
                           "saturates without VNNI)")  # fmt: skip
        else:
            w_int8, self._w_scale, _sqnr = int8
            if w_int8 is not self.qweight:
                self.kernel += f", {self.scheme.weight.format} codes expanded to int8 at load"
            self._packed = cpu.prepack_int8_conv(
                w_int8, self._w_scale, self.stride, self.padding, self.dilation, self.groups
            )

    def _uint8_inputs(self) -> bool:
        """Whether the inputs' codes fit oneDNN's uint8 grid with the same scale.

        Static grids of up to 8 bits do (a 4-bit grid is a subset of the uint8 one, shifted by
        128 like int8); dynamic inputs get an 8-bit range of their own, so only 8-bit specs.
        """
        bits = self.scheme.activation.int_format.bits
        return bits <= 8 if self.scheme.mode is QuantMode.STATIC else bits == 8

    def _input_range(self) -> int:
        """The largest ``|q_x - z_x|`` this layer's inputs can have."""
        if self.scheme.mode is QuantMode.STATIC:
            c = self._codes
            return max(c.zero_point - c.qmin, c.qmax - c.zero_point)
        return 255

    def _input_qparams(self, x: torch.Tensor):
        """``(s, z, qmin, qmax)`` of the uint8 grid of ``x``: calibrated (s, z Python numbers
        and 0-d tensors), or from x's own min/max (0-d tensors: no host sync, one graph under
        torch.compile)."""
        if self.scheme.mode is QuantMode.STATIC:
            c = self._codes
            return c.scale, c.zero_point + 128, c.qmin + 128, c.qmax + 128
        lo_x, hi_x = torch.aminmax(x)
        lo_v, hi_v = lo_x.clamp(max=0.0), hi_x.clamp(min=0.0)
        scale = ((hi_v - lo_v) / 255.0).clamp(min=1e-12)
        return scale, torch.round(-lo_v / scale).clamp(0, 255), 0, 255

    def _quantize_input(self, x: torch.Tensor) -> tuple[torch.Tensor, Any, Any]:
        """uint8 codes of ``x`` with their (scale, zero point): calibrated (Python numbers), or
        from x's min/max (0-d tensors).

        A static int8 grid maps onto uint8 by adding 128 to codes and zero point alike, which
        leaves ``q - z`` unchanged. Dynamic inputs get an asymmetric uint8 range of their own.
        """
        scale, zp, lo, hi = self._input_qparams(x)
        s_t, z_t = (torch.tensor(float(v)) if not isinstance(v, torch.Tensor) else v
                    for v in (scale, zp))  # fmt: skip
        qx = cpu.quantize_static(x, s_t, z_t, lo, hi, torch.uint8)
        return qx, scale, zp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"QuantConv expects [batch, {self.in_channels}, *{self.dims} spatial dims] inputs, "
                f"got shape {list(x.shape)}"
            )
        path, y = self._conv(x.detach())  # inference only, as QuantLinear
        self._ran(path, x.numel() // self.in_channels)
        return y.to(x.dtype)

    def _conv(self, x: torch.Tensor) -> tuple[KernelPath, torch.Tensor]:
        """The convolution on this call's kernel, and that kernel's path."""
        if self.scheme.mode is QuantMode.WEIGHT_ONLY:
            w = self.dequantized_weight().to(cpu.dequant_dtype())
            b = None if self.bias is None else self.bias.to(w.dtype)
            y = CONV_FN[self.dims](
                x.to(w.dtype), w, b, self.stride, self.padding, self.dilation, self.groups
            )
            return self._dequant_path, y
        if not self._uint8_inputs():
            return kc.REFERENCE_FP64_CONV, self._forward_general(x.float())
        if self._fp32 is not None:
            return kc.INT8_FP32_CONV, self._conv_fp32(x.float())
        qx, scale, zp = self._quantize_input(x.float())
        if self._fast:
            y = cpu.int8_conv(
                qx,
                scale,
                zp,
                self._packed,
                self._w_scale,
                self.bias,
                self.stride,
                self.padding,
                self.dilation,
                self.groups,
            )
            return kc.INT8_ONEDNN_CONV, y
        return kc.REFERENCE_FP64_CONV, self._conv_reference(qx, scale, zp)

    def _conv_fp32(self, x: torch.Tensor) -> torch.Tensor:
        """No VNNI: centered codes ``q_x - z_x`` in one fused pass, an fp32 conv, one epilogue."""
        scale, zp, lo, hi = self._input_qparams(x)
        if self.scheme.mode is QuantMode.STATIC:
            scale, zp = self._codes._scale_t, self._codes._zp_t + 128
        rows = x.numel() // max(self.in_channels, 1)
        xq = fused.fused(fused.quantize_centered, rows)(x, scale, zp, lo, hi)
        return cpu.fp32_conv_codes(xq, self._fp32, scale, self.bias, self.stride, self.padding,
                                   self.dilation, self.groups)  # fmt: skip

    def _forward_general(self, x: torch.Tensor) -> torch.Tensor:
        """Activations of widths other than 8 bits: quantize-dequantize them as the spec says
        (dynamic: one range per input tensor), then convolve in float64 (no fast kernel)."""
        if self.scheme.mode is QuantMode.STATIC:
            c = self._codes
            xd = (c(x).double() - c.zero_point) * c.scale
        else:
            spec = dataclasses.replace(self.scheme.activation, granularity="per_tensor")
            xd = fake_quantize_dynamic(x, spec).double()
        b = None if self.bias is None else self.bias.double()
        w = self.dequantized_weight().double()
        return CONV_FN[self.dims](
            xd, w, b, self.stride, self.padding, self.dilation, self.groups
        ).float()

    def _conv_reference(self, qx: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
        """Exact integer convolution, then ``acc * s_x * s_w + b``: the oracle of the fast path."""
        shape = [1, -1] + [1] * self.dims
        w_scale = self._per_channel_scale()
        if w_scale is None or self.qweight.dtype != torch.int8:  # other grids: dequantized values
            xd = (qx.double() - zp) * scale
            y = CONV_FN[self.dims](
                xd,
                self.dequantized_weight().double(),
                None,
                self.stride,
                self.padding,
                self.dilation,
                self.groups,
            )
        else:
            acc = reference.int8_conv_ref(
                qx, zp, self.qweight, self.stride, self.padding, self.dilation, self.groups
            )
            y = acc * (w_scale.double() * scale).reshape(shape)
        if self.bias is not None:
            y = y + self.bias.double().reshape(shape)
        return y.float()
