"""QAT layers: a float layer whose weight and input pass through LSQ fake quantization.

Each layer keeps its float weight (the "shadow" weight the optimizer updates), a learnable step
per weight block and, for static schemes, a learnable per-tensor input step. Initial steps are
lowbit's post-training ones: min/max per weight block, and the first training batch's min/max
for the input. :meth:`QATLayer.to_quantized` builds the integer layer ``lowbit.quantize`` would
build with these parameters, so the converted model computes what the fake-quant model did.

Scales are rounded as they will be stored (bf16 below 8 bits) in the forward pass already.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.config import QuantMode, QuantScheme
from lowbit.errors import CalibrationError, ConfigError
from lowbit.formats import IntFormat
from lowbit.kernels.reference import CONV_FN
from lowbit.nn import QuantConv, QuantLinear
from lowbit.nn.base import QuantizedWeight
from lowbit.primitives import block_minmax, choose_qparams, quantize
from lowbit.qat.fake_quant import cast_ste, lsq_fake_quantize, lsq_grad_factor

__all__ = ["QATLayer", "QATLinear", "QATConv"]


class QATLayer(nn.Module):
    """Shared fake-quant machinery; subclasses give the float op and the integer class."""

    def __init__(self, module: nn.Linear | nn.Conv1d | nn.Conv2d, scheme: QuantScheme, name: str):
        super().__init__()
        if scheme.mode is QuantMode.CAST or not isinstance(scheme.weight.number_format, IntFormat):
            raise ConfigError(
                f"{name}: QAT takes uniform integer weight formats for now, got scheme "
                f"{scheme.name!r}; grids, codebooks and casts are quantized post-training"
            )
        self.scheme, self.name = scheme, name
        self.weight = nn.Parameter(module.weight.detach().clone())
        self.bias = None if module.bias is None else nn.Parameter(module.bias.detach().clone())
        fmt, spec = scheme.weight.int_format, scheme.weight
        w2d = self.weight.detach().reshape(self.weight.shape[0], -1)
        self._w_block = spec.granularity_value.block_size(tuple(w2d.shape))
        scale, zp = choose_qparams(*block_minmax(w2d, self._w_block), fmt, spec.symmetric)
        self.weight_scale = nn.Parameter(scale)
        self.register_buffer("weight_zero_point", zp.to(torch.int32))
        self._w_g = lsq_grad_factor(w2d.numel() // scale.numel(), fmt.qmax)
        self._static = scheme.mode is QuantMode.STATIC
        if self._static:
            self.input_scale = nn.Parameter(torch.ones(()))
            self.register_buffer("input_zero_point", torch.zeros((), dtype=torch.int32))
            self.register_buffer("input_initialized", torch.zeros((), dtype=torch.bool))

    # -- fake quantization -----------------------------------------------------------------------
    def _stored_scale(self, s: torch.Tensor) -> torch.Tensor:
        """The weight step as it will be stored: bf16 below 8 bits (see weight_quant)."""
        if self.scheme.weight.int_format.bits < 8:
            return cast_ste(s, torch.bfloat16)
        return s

    def fake_weight(self) -> torch.Tensor:
        fmt = self.scheme.weight.int_format
        w2d = self.weight.reshape(self.weight.shape[0], -1)
        s = self._stored_scale(self.weight_scale.abs().clamp(min=1e-12))
        wq = lsq_fake_quantize(
            w2d, s, self.weight_zero_point, fmt.qmin, fmt.qmax, self._w_block, self._w_g
        )
        return wq.reshape(self.weight.shape)

    def fake_input(self, x: torch.Tensor) -> torch.Tensor:
        mode, act = self.scheme.mode, self.scheme.activation
        if mode is QuantMode.WEIGHT_ONLY:
            return x.to(torch.bfloat16).to(x.dtype)  # the kernels see bf16 activations
        fmt = act.int_format
        if mode is QuantMode.DYNAMIC:  # per-token or per-tensor steps from x itself, not learned
            x2 = x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x
            block = act.granularity_value.block_size(tuple(x2.shape))
            lo, hi = block_minmax(x2.detach(), block)
            s, z = choose_qparams(lo, hi, fmt, act.symmetric)
            return lsq_fake_quantize(x2, s, z, fmt.qmin, fmt.qmax, block, 0.0).reshape(x.shape)
        if not bool(self.input_initialized):
            self._init_input_step(x, fmt)
        s = self.input_scale.abs().clamp(min=1e-12)
        g = lsq_grad_factor(x[0].numel(), fmt.qmax)
        block = tuple(x.shape)  # one step for the whole tensor
        return lsq_fake_quantize(x, s, self.input_zero_point, fmt.qmin, fmt.qmax, block, g)

    @torch.no_grad()
    def _init_input_step(self, x: torch.Tensor, fmt: IntFormat) -> None:
        """The first batch's min/max step, as post-training calibration would choose it."""
        lo, hi = torch.aminmax(x.detach().float())
        scale, zp = choose_qparams(lo, hi, fmt, self.scheme.activation.symmetric)
        self.input_scale.copy_(scale)
        self.input_zero_point.copy_(zp)
        self.input_initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._op(self.fake_input(x), self.fake_weight(), self.bias)

    # -- conversion ------------------------------------------------------------------------------
    def quantized_weight(self) -> QuantizedWeight:
        """Integer codes of the shadow weight with the learned steps, as stored after convert."""
        fmt = self.scheme.weight.int_format
        w2d = self.weight.detach().reshape(self.weight.shape[0], -1)
        s = self._stored_scale(self.weight_scale.detach().abs().clamp(min=1e-12))
        q = quantize(w2d, s.float(), self.weight_zero_point, fmt, self._w_block)
        low_bit = fmt.bits < 8
        scale = s.to(torch.bfloat16) if low_bit else s.float()
        zp = self.weight_zero_point.to(torch.int8 if low_bit else torch.int32)
        return QuantizedWeight(q.reshape(self.weight.shape), scale, zp)

    def input_qparams(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self._static:
            return None
        if not bool(self.input_initialized):
            raise CalibrationError(
                f"{self.name}: its input step was never initialised; run at least one batch "
                "through the prepared model (training or model(x)) before convert"
            )
        return self.input_scale.detach().abs().clamp(min=1e-12), self.input_zero_point

    def _op(self, x, w, b):  # pragma: no cover - subclasses
        raise NotImplementedError


class QATLinear(QATLayer):
    """``nn.Linear`` under fake quantization; converts to :class:`~lowbit.nn.QuantLinear`."""

    def __init__(self, linear: nn.Linear, scheme: QuantScheme, name: str = "linear"):
        super().__init__(linear, scheme, name)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def _op(self, x, w, b):
        return nn.functional.linear(x, w, b)

    def to_quantized(self) -> QuantLinear:
        bias = None if self.bias is None else self.bias.detach()
        return QuantLinear(
            self.in_features,
            self.out_features,
            self.scheme,
            self.quantized_weight(),
            bias,
            self.input_qparams(),
        )


class QATConv(QATLayer):
    """``nn.Conv1d``/``nn.Conv2d`` under fake quantization; converts to :class:`QuantConv`."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d, scheme: QuantScheme, name: str = "conv"):
        super().__init__(conv, scheme, name)
        self.dims = conv.weight.dim() - 2
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        # everything needed to rebuild an empty conv of this shape (without its weights)
        self._geometry = dict(
            in_channels=conv.in_channels, out_channels=conv.out_channels,
            kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
        )  # fmt: skip

    def _op(self, x, w, b):
        return CONV_FN[self.dims](x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def to_quantized(self) -> QuantConv:
        bias = None if self.bias is None else self.bias.detach()
        shell = (nn.Conv1d if self.dims == 1 else nn.Conv2d)(**self._geometry, device="meta")
        return QuantConv(shell, self.scheme, self.quantized_weight(), bias, self.input_qparams())
