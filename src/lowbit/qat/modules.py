"""QAT layers: a float layer whose weight and input pass through fake quantization.

Each layer keeps its float weight (the "shadow" weight the optimizer updates), a weight fake
quantizer for its format (:mod:`lowbit.qat.weights`: LSQ steps, fixed grids with the
straight-through estimator, or trainable k-means centroids) and, for static schemes, a learnable
per-tensor LSQ input step initialised from the first training batch's min/max. :meth:`QATLayer.to_quantized` builds the integer layer ``lowbit.quantize`` would
build with these parameters, so the converted model computes what the fake-quant model did.

Parameters are rounded as they will be stored (bf16 steps below 8 bits, fp16 codebooks) in the
forward pass already.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.config import QuantMode, QuantScheme
from lowbit.errors import CalibrationError, ConfigError
from lowbit.formats import IntFormat
from lowbit.kernels.reference import CONV_FN
from lowbit.nn import QuantConv, QuantLinear
from lowbit.nn.base import QuantizedWeight, fake_quantize_dynamic
from lowbit.primitives import choose_qparams
from lowbit.qat.fake_quant import lsq_fake_quantize, lsq_grad_factor, pact_fake_quantize
from lowbit.qat.weights import make_weight_quantizer

__all__ = ["QATLayer", "QATLinear", "QATConv"]


class QATLayer(nn.Module):
    """Shared fake-quant machinery; subclasses give the float op and the integer class."""

    def __init__(
        self,
        module: nn.Linear | nn.Conv1d | nn.Conv2d,
        scheme: QuantScheme,
        name: str,
        quantizer_weight: torch.Tensor | None = None,
    ):
        """``quantizer_weight``: what the weight quantizer starts from (default: the weight)."""
        super().__init__()
        if scheme.mode is QuantMode.CAST:
            raise ConfigError(f"{name}: {scheme.name} is a cast; there is nothing to train for it")
        self.scheme, self.name = scheme, name
        self.weight = nn.Parameter(module.weight.detach().clone())
        self.bias = None if module.bias is None else nn.Parameter(module.bias.detach().clone())
        start = self.weight if quantizer_weight is None else quantizer_weight
        self.weight_quantizer = make_weight_quantizer(start.detach(), scheme.weight)
        self._static = scheme.mode is QuantMode.STATIC
        if self._static:
            self.input_scale = nn.Parameter(torch.ones(()))
            self.register_buffer("input_zero_point", torch.zeros((), dtype=torch.int32))
            self.register_buffer("input_initialized", torch.zeros((), dtype=torch.bool))
            self.register_buffer("input_pact", torch.zeros((), dtype=torch.bool))
        self.activation_estimator = "lsq"  # or "pact" (set by prepare)

    # -- fake quantization -----------------------------------------------------------------------
    def fake_weight(self) -> torch.Tensor:
        return self.weight_quantizer(self.weight)

    def quantizer_input(self) -> torch.Tensor:
        """The weight the quantizer sees (the folded one for conv+BN layers)."""
        return self.weight

    def fake_input(self, x: torch.Tensor) -> torch.Tensor:
        mode, act = self.scheme.mode, self.scheme.activation
        if mode is QuantMode.WEIGHT_ONLY:
            return x.to(torch.bfloat16).to(x.dtype)  # the kernels see bf16 activations
        fmt = act.int_format
        if mode is QuantMode.DYNAMIC and isinstance(self, QATConv):
            # QuantConv's dynamic path: one asymmetric uint8 range per input tensor
            lo, hi = torch.aminmax(x.detach())
            s, z = choose_qparams(lo, hi, IntFormat(8, signed=False), symmetric=False)
            return lsq_fake_quantize(x, s, z, 0, 255, tuple(x.shape), 0.0)
        if mode is QuantMode.DYNAMIC:  # per-token or per-tensor steps from x itself, not learned
            x2 = x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x
            return fake_quantize_dynamic(x2, act).reshape(x.shape)
        if not bool(self.input_initialized):
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            if distributed and not self.calibrating:
                raise CalibrationError(
                    f"{self.name}: input step not initialised under torch.distributed; pass "
                    "calibration=... to lowbit.qat.prepare before wrapping the model in DDP, "
                    "so every replica starts from the same steps"
                )
            self.set_input_range(*torch.aminmax(x.detach().float()))  # the first batch's
        s = self.input_scale.abs().clamp(min=1e-12)
        if bool(self.input_pact):
            return pact_fake_quantize(x, s, fmt.qmax - fmt.qmin)
        g = lsq_grad_factor(x[0].numel(), fmt.qmax)
        block = tuple(x.shape)  # one step for the whole tensor
        return lsq_fake_quantize(x, s, self.input_zero_point, fmt.qmin, fmt.qmax, block, g)

    @torch.no_grad()
    def set_input_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Start the input step at the range ``[lo, hi]`` (calibration's min/max)."""
        act = self.scheme.activation
        fmt = act.int_format
        pact = self.activation_estimator == "pact" and float(lo) >= 0 and not act.symmetric
        if pact:  # [0, α] on the whole grid: s = α / (qmax - qmin), zero at qmin
            scale = (hi.float() / (fmt.qmax - fmt.qmin)).clamp(min=1e-12)
            zp = torch.tensor(fmt.qmin)
        else:
            scale, zp = choose_qparams(lo, hi, fmt, act.symmetric)
        self.input_scale.copy_(scale.reshape(()))
        self.input_zero_point.copy_(zp.reshape(()))
        self.input_pact.fill_(pact)
        self.input_initialized.fill_(True)

    calibrating = False  # set while prepare() calibrates (steps may then start lazily)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._op(self.fake_input(x), self.fake_weight(), self.bias)

    # -- conversion ------------------------------------------------------------------------------
    def quantized_weight(self) -> QuantizedWeight:
        """Integer codes of the shadow weight with the learned parameters, as after convert."""
        return self.weight_quantizer.quantized(self.weight)

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

    def __init__(
        self,
        conv: nn.Conv1d | nn.Conv2d,
        scheme: QuantScheme,
        name: str = "conv",
        quantizer_weight: torch.Tensor | None = None,
    ):
        super().__init__(conv, scheme, name, quantizer_weight)
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
