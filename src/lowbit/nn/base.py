"""What every quantized layer shares: weight quantization, activation qparams, a JSON layer spec.

A quantized layer stores its *integer* weight (``qweight``), its per-block ``weight_scale`` and
``weight_zero_point`` and, for static activations, ``input_scale``/``input_zero_point``. Anything
derived for a kernel (packed layouts, fused epilogue vectors) is recomputed after construction,
``load_state_dict``, ``copy.deepcopy`` and unpickling, and is never saved
(:mod:`lowbit.nn.module_protocol`).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, NamedTuple

import torch

from lowbit.config import QuantMode, QuantScheme, TensorQuantSpec
from lowbit.formats import IntFormat
from lowbit.kernels import cpu
from lowbit.nn.kernel_calls import KernelPath
from lowbit.nn.module_protocol import PreparedModule
from lowbit.primitives import block_minmax, block_view, choose_qparams, fake_quantize
from lowbit.weight_quant import QuantizedWeight, check_finite, dequantize_weight, quantize_weight

__all__ = [
    "QuantModule",
    "QuantizedWeight",
    "quantize_weight",
    "check_finite",
    "static_input_qparams",
    "ActivationCodes",
    "placeholder_qparams",
    "fake_quantize_dynamic",
    "Int8Weight",
    "EXPANSION_MIN_SQNR_DB",
    "INPUT_SCALE_ATTR",
]

log = logging.getLogger(__name__)


# Below this SQNR in any scale block (stored format vs its int8 expansion) the expansion would
# add noise comparable to a 5-bit format's own error, so layers use another path (a 4-bit grid's
# own error is about 20 dB).
EXPANSION_MIN_SQNR_DB = 30.0

# Attribute that SmoothQuant/AWQ leave on a float Linear when their scale cannot be folded into
# the previous op: the layer's input is multiplied by it (QuantLinear keeps it as input_smooth).
INPUT_SCALE_ATTR = "lowbit_input_smooth"


class Int8Weight(NamedTuple):
    """Codes for the int8 kernels: ``w ≈ q * scale[:, None]``, ``sqnr_db`` = inf when exact."""

    q: torch.Tensor
    scale: torch.Tensor
    sqnr_db: float


class QuantModule(PreparedModule):
    """Base of lowbit's quantized layers: a scheme, a kernel name, and a JSON-able spec.

    ``kernel`` describes the path chosen at load; ``last_call`` is ``(KernelPath, rows)`` of the
    latest forward, the path that call really took (see :mod:`lowbit.nn.kernel_calls`).
    """

    scheme: QuantScheme
    kernel: str = "reference"
    last_call: tuple[KernelPath, int] | None = None

    def _ran(self, path: KernelPath, rows: int) -> None:
        """Remember this call's kernel path and row count (read by ``record_kernels``)."""
        # Under torch.compile an attribute written in forward would become a traced side effect.
        if not torch.compiler.is_compiling():
            self.last_call = (path, rows)

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
        """Buffers ``qweight`` plus ``weight_scale``/``weight_zero_point``/``weight_codebook``
        (whichever the format has). fp32/int32 qparams at 8 bits and wider, bf16/int8 below."""
        self.register_buffer("qweight", qw.qdata)
        low_bit = qw.scale is not None and qw.scale.dtype == torch.bfloat16
        if qw.scale is not None:
            self.register_buffer("weight_scale", qw.scale if low_bit else qw.scale.float())
        if qw.zero_point is not None:
            zp_dtype = torch.int8 if low_bit else torch.int32
            self.register_buffer("weight_zero_point", qw.zero_point.to(zp_dtype))
        if qw.codebook is not None:
            self.register_buffer("weight_codebook", qw.codebook)

    def _quantized_weight(self) -> QuantizedWeight:
        return QuantizedWeight(
            self.qweight,
            getattr(self, "weight_scale", None),
            getattr(self, "weight_zero_point", None),
            getattr(self, "weight_codebook", None),
        )

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the codes stand for (for reference paths and analysis)."""
        return dequantize_weight(self._quantized_weight(), self.scheme.weight)

    def __getattr__(self, name: str):
        """``layer.weight``, for model code that reads ``proj.weight.dtype`` / ``.device`` (ViT in
        transformers does, every forward): the dequantized float weight, built on access.

        The layer's own forward never reads it; it runs on the stored codes.
        """
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "weight" and "qweight" in self._buffers:
                return self.dequantized_weight()
            raise

    def _per_channel_scale(self) -> torch.Tensor | None:
        """``[out]`` scale when the codes are symmetric integers with one scale per channel."""
        s = getattr(self, "weight_scale", None)
        zp = getattr(self, "weight_zero_point", None)
        if s is None or zp is None or s.shape[-1] != 1 or bool((zp != 0).any()):
            return None
        return s.float().reshape(-1).expand(self.qweight.shape[0]).contiguous()

    def int8_weight(self) -> Int8Weight | None:
        """An int8 ``[out, ...]`` weight with ``[out]`` fp32 scales, for the int8 kernels.

        Symmetric integer codes with one scale per channel are used as they are. Formats below
        8 bits and non-uniform ones are expanded once (at load) from their dequantized values,
        ``q = round(w / s)`` with ``s = max|w_c| / 127`` per output channel. That is exact for
        grids on this lattice (binary, ternary); otherwise the values are rounded to 8 bits, and
        ``sqnr_db`` says how close the expansion stays to the stored format. Group-wise formats
        whose groups differ a lot in size within a row can lose their small groups here; the
        layers check ``sqnr_db`` against :data:`EXPANSION_MIN_SQNR_DB`. Returns None for
        8-bit-and-wider codes the kernels cannot read (rounding them again would change the
        user's chosen precision).
        """
        scale = self._per_channel_scale()
        if scale is not None and self.qweight.dtype == torch.int8:
            return Int8Weight(self.qweight, scale, math.inf)
        fmt = self.scheme.weight.number_format
        if isinstance(fmt, IntFormat) and fmt.bits >= 8:
            return None
        w = self.dequantized_weight()
        w2d = w.reshape(w.shape[0], -1)
        scale = (w2d.abs().amax(dim=1) / 127).clamp(min=1e-12)
        q = torch.round(w2d / scale[:, None]).clamp_(-127, 127)
        sqnr = self._worst_block_sqnr(w2d, q * scale[:, None])
        return Int8Weight(q.to(torch.int8).reshape(w.shape), scale, sqnr)

    def _worst_block_sqnr(self, w2d: torch.Tensor, approx: torch.Tensor) -> float:
        """Lowest SQNR over the format's scale blocks (a small group must not drown in a row)."""
        gran = self.scheme.weight.granularity_value
        block = gran.block_size(tuple(w2d.shape))
        dims = (1, 3)
        signal = block_view(w2d, block).pow(2).sum(dim=dims)
        noise = block_view(approx - w2d, block).pow(2).sum(dim=dims)
        exact = noise <= 1e-12 * signal
        ratio = torch.where(exact | (signal == 0), torch.inf, signal / noise.clamp(min=1e-30))
        worst = float(ratio.min())
        return math.inf if math.isinf(worst) else 10 * math.log10(worst)

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
    """Dynamic quantization: ranges from ``x`` itself per block, then quantize-dequantize.

    The reference of the dynamic kernels, and QAT's dynamic activations: the gradient passes
    straight through (ranges are not learned).
    """
    block = spec.granularity_value.block_size(tuple(x.shape))
    lo, hi = block_minmax(x.detach(), block)
    scale, zp = choose_qparams(lo, hi, spec.int_format, spec.symmetric)
    return fake_quantize(x, scale, zp, spec.int_format, block)
