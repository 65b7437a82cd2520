"""What every quantized layer shares: weight quantization, activation qparams, a JSON layer spec.

A quantized layer stores its *integer* weight (``qweight``), its per-block ``weight_scale`` and
``weight_zero_point`` and, for static activations, ``input_scale``/``input_zero_point``. Anything
derived for a kernel (packed layouts, fused epilogue vectors) is recomputed after construction
and after ``load_state_dict`` and is never saved.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn

from lowbit.config import QuantMode, QuantScheme, TensorQuantSpec
from lowbit.errors import InvalidModelError
from lowbit.kernels import cpu
from lowbit.primitives import block_minmax, choose_qparams, dequantize, quantize

__all__ = [
    "QuantModule",
    "QuantizedWeight",
    "quantize_weight",
    "check_finite",
    "static_input_qparams",
    "ActivationCodes",
    "placeholder_qparams",
    "fake_quantize_dynamic",
]

log = logging.getLogger(__name__)


def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise :class:`InvalidModelError` naming ``what`` if ``t`` holds NaN or Inf."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise InvalidModelError(
            f"{what} contains {n_bad} NaN/Inf value(s); lowbit cannot choose a range for it. "
            "Fix or re-train the model, or exclude this layer with exclude=[...]."
        )


class QuantizedWeight:
    """Integer codes of a weight viewed as ``[out_channels, -1]`` plus per-block qparams."""

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor):
        self.qdata, self.scale, self.zero_point = qdata, scale, zero_point


def quantize_weight(weight: torch.Tensor, spec: TensorQuantSpec, what: str) -> QuantizedWeight:
    """Round-to-nearest quantization of ``weight`` with min/max ranges per block.

    The weight is viewed as 2-D ``[out, in * kernel...]`` so per-channel means per output channel
    and per-group means groups along the flattened input dimension.
    """
    check_finite(weight, what)
    fmt = spec.int_format
    w2d = weight.detach().float().reshape(weight.shape[0], -1)
    block = spec.granularity_value.block_size(tuple(w2d.shape))
    lo, hi = block_minmax(w2d, block)
    scale, zp = choose_qparams(lo, hi, fmt, spec.symmetric)
    if fmt.bits < 8:
        # Sub-8-bit grids carry many scales (one per group): keep them in bf16 and the zero points
        # in int8, so they cost ~0.2 bit per weight at group 128 instead of ~0.5. The codes are
        # computed with the rounded scale, so saving loses nothing.
        scale = scale.to(torch.bfloat16)
        if not spec.symmetric:
            zp = torch.clamp(
                fmt.qmin - torch.round(lo.clamp(max=0) / scale.float()), fmt.qmin, fmt.qmax
            )
        zp = zp.to(torch.int8)
    q = quantize(w2d, scale.float(), zp, fmt, block)
    return QuantizedWeight(q.reshape(weight.shape), scale, zp)


class QuantModule(nn.Module):
    """Base of lowbit's quantized layers: a scheme, a kernel name, and a JSON-able spec."""

    scheme: QuantScheme
    kernel: str = "reference"

    def layer_spec(self) -> dict[str, Any]:
        """Everything needed to rebuild this layer's empty shell from the float layer it replaced."""
        return {"type": type(self).__name__, "scheme": self.scheme.to_dict()}

    def extra_repr(self) -> str:
        return f"scheme={self.scheme.name}, kernel={self.kernel}"

    def _register_tensors(
        self,
        qweight: QuantizedWeight,
        bias: torch.Tensor | None,
        input_qparams: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> None:
        """Integer weight, float bias and (static schemes) the calibrated input qparams."""
        self._register_qweight(qweight)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        if self.scheme.mode is QuantMode.STATIC:
            if input_qparams is None:
                raise ValueError(
                    "a static scheme needs calibrated input_qparams=(scale, zero_point)"
                )
            self.register_buffer("input_scale", input_qparams[0].reshape(()).float().clone())
            self.register_buffer("input_zero_point", input_qparams[1].reshape(()).to(torch.int32))

    def _register_qweight(self, qw: QuantizedWeight) -> None:
        self.register_buffer("qweight", qw.qdata)
        # fp32/int32 for 8-bit and wider, bf16/int8 below 8 bits (see quantize_weight)
        low_bit = qw.scale.dtype == torch.bfloat16
        self.register_buffer("weight_scale", qw.scale if low_bit else qw.scale.float())
        self.register_buffer(
            "weight_zero_point", qw.zero_point.to(torch.int8 if low_bit else torch.int32)
        )
        # Derived kernel data must follow the stored tensors after load_state_dict.
        self.register_load_state_dict_post_hook(lambda module, _keys: module._prepare())

    def _weight_block(self) -> tuple[int, ...]:
        w2d_shape = (self.qweight.shape[0], self.qweight[0].numel())
        return self.scheme.weight.granularity_value.block_size(w2d_shape)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the integer codes stand for (for reference paths and analysis)."""
        q2d = self.qweight.reshape(self.qweight.shape[0], -1)
        scale = self.weight_scale.float()
        w = dequantize(q2d, scale, self.weight_zero_point, self._weight_block())
        return w.reshape(self.qweight.shape)

    def _per_channel_scale(self) -> torch.Tensor | None:
        """``[out]`` weight scale when one scale per output channel suffices, else None."""
        s = self.weight_scale
        if s.shape[-1] != 1 or bool((self.weight_zero_point != 0).any()):
            return None
        return s.float().reshape(-1).expand(self.qweight.shape[0]).contiguous()

    def _prepare(self) -> None:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def _fallback(self, reason: str) -> None:
        """Use the reference path, loudly: a warning now and the reason in ``self.kernel``."""
        self.kernel = f"reference ({reason})"
        warnings.warn(
            f"{type(self).__name__}: no fast kernel, using the reference path: {reason}",
            RuntimeWarning,
            stacklevel=3,
        )


def static_input_qparams(
    spec: TensorQuantSpec, min_val: torch.Tensor, max_val: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor activation scale and zero point (0-d tensors) in the format's own code domain."""
    fmt = spec.int_format
    scale, zp = choose_qparams(min_val.reshape(()), max_val.reshape(()), fmt, spec.symmetric)
    return scale.float(), zp.to(torch.int32)


class ActivationCodes:
    """Static activation quantization into int8 codes for the integer kernels.

    ``q = clamp(round(x / s) + z, qmin, qmax) - offset`` where ``offset`` moves an unsigned 8-bit
    grid into int8 (``uint8`` codes minus 128); ``q - (z - offset)`` is unchanged by the shift.
    """

    def __init__(self, spec: TensorQuantSpec, scale: torch.Tensor, zero_point: torch.Tensor):
        fmt = spec.int_format
        self.offset = 128 if (not fmt.signed and fmt.bits == 8) else 0
        self.fits_int8 = fmt.bits <= 8
        self.scale = float(scale)
        self.zero_point = int(zero_point) - self.offset
        self.qmin, self.qmax = fmt.qmin - self.offset, fmt.qmax - self.offset
        # 0-d tensors for the fused kernel (one compiled kernel serves every layer)
        self._scale_t = torch.tensor(self.scale)
        self._zp_t = torch.tensor(float(self.zero_point))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fits_int8:
            q = torch.div(x, self.scale).round_().add_(self.zero_point)
            return q.clamp_(self.qmin, self.qmax).to(torch.int32)
        return cpu.quantize_static(x, self._scale_t, self._zp_t, self.qmin, self.qmax)


def placeholder_qparams(scheme: QuantScheme) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Stand-in activation qparams for an empty shell that ``load_state_dict`` will overwrite."""
    if scheme.mode is not QuantMode.STATIC:
        return None
    return torch.ones(()), torch.zeros((), dtype=torch.int32)


def fake_quantize_dynamic(x: torch.Tensor, spec: TensorQuantSpec) -> torch.Tensor:
    """Reference dynamic quantization: ranges from ``x`` itself per block, then quantize-dequantize."""
    block = spec.granularity_value.block_size(tuple(x.shape))
    lo, hi = block_minmax(x, block)
    scale, zp = choose_qparams(lo, hi, spec.int_format, spec.symmetric)
    return dequantize(quantize(x, scale, zp, spec.int_format, block), scale, zp, block)
