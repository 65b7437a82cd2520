"""``QuantLinear``: an ``nn.Linear`` with integer weights running on integer kernels.

Modes (from the scheme):

* static  ``y = (acc - z_x * colsum(q_w)) * s_x * s_w + b``, ``acc = q_x @ q_w^T`` (int32)
* dynamic ``y = acc * s_x[m] * s_w[n] + b`` with per-token ``s_x`` computed from each input
* weight-only ``y = bf16(x) @ (q_w * s_w)^T + b`` on ``_weight_int8pack_mm``; uniform weights of
  2..4 bits on ``_weight_int4pack_mm_for_cpu`` instead

Non-uniform weights (NF4, power-of-two, binary/ternary, k-means) and any other format the int8
kernels cannot read directly are expanded once, at load, to int8 with one scale per output
channel (:meth:`QuantModule.int8_weight`), then run on the same int8 kernels. A per-call lookup
table dequantize per call was measured 75-200x slower than the int8 kernel at batch 1
(benchmarks/RESULTS.md). Where the expansion would lose accuracy (groups of very different size in
one row, below ``EXPANSION_MIN_SQNR_DB``), the weight is dequantized once to bf16 instead.

The static zero-point correction and the bias fold into one vector,
``b' = b - z_x * s_x * s_w * colsum(q_w)``, so the epilogue is a single ``addcmul``.

>>> lin = nn.Linear(64, 32)
>>> q = QuantLinear.from_float(lin, get_preset("W8A8-dynamic"))
>>> q.qweight.dtype, q(torch.randn(4, 64)).shape
(torch.int8, torch.Size([4, 32]))
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from lowbit.config import QuantMode, QuantScheme
from lowbit.formats import IntFormat
from lowbit.granularity import GranularityKind
from lowbit.kernels import cpu
from lowbit.nn import kernel_calls as kc
from lowbit.nn.base import (
    EXPANSION_MIN_SQNR_DB,
    INPUT_SCALE_ATTR,
    ActivationCodes,
    Int8Weight,
    QuantizedWeight,
    QuantModule,
    check_finite,
    fake_quantize_dynamic,
    quantize_weight,
)
from lowbit.nn.base import (
    placeholder_qparams as _placeholder_qparams,
)
from lowbit.nn.kernel_calls import KernelPath
from lowbit.weight_quant import placeholder_weight

__all__ = ["QuantLinear"]

log = logging.getLogger(__name__)


class QuantLinear(QuantModule):
    """Integer-weight linear layer; build it with :meth:`from_float` (or :meth:`from_spec`)."""

    _derived = ("_fast", "_int4", "_w_bf16", "_codes", "_w_int8", "_w_scale", "_scale_bf16",
                "_per_token", "_out_scale", "_bias_eff", "_dequant_path",
                "_int8_path")  # fmt: skip

    def __init__(
        self,
        in_features: int,
        out_features: int,
        scheme: QuantScheme,
        qweight: QuantizedWeight,
        bias: torch.Tensor | None,
        input_qparams: tuple[torch.Tensor, torch.Tensor] | None = None,
        input_smooth: torch.Tensor | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features, self.scheme = in_features, out_features, scheme
        self._register_tensors(qweight, bias, input_qparams)
        # SmoothQuant/AWQ scales that could not be folded into the previous op: x * input_smooth
        smooth = None if input_smooth is None else input_smooth.detach().float().reshape(-1)
        self.register_buffer("input_smooth", smooth)
        self._prepare()

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        scheme: QuantScheme,
        input_qparams: tuple[torch.Tensor, torch.Tensor] | None = None,
        name: str = "linear",
        qweight: QuantizedWeight | None = None,
    ) -> QuantLinear:
        """Quantize ``linear``'s weight; static schemes need ``input_qparams=(scale, zero_point)``.

        ``qweight``: codes chosen by a PTQ algorithm (GPTQ, AdaRound) instead of rounding here.
        An unfused smoothing scale left on ``linear`` by SmoothQuant/AWQ is kept.
        """
        if linear.bias is not None:
            check_finite(linear.bias, f"{name}.bias")
        if qweight is None:
            qweight = quantize_weight(linear.weight, scheme.weight, f"{name}.weight")
        smooth = getattr(linear, INPUT_SCALE_ATTR, None)
        return cls(linear.in_features, linear.out_features, scheme, qweight, linear.bias,
                   input_qparams, smooth)  # fmt: skip

    @classmethod
    def from_spec(cls, spec: dict[str, Any], float_module: nn.Linear) -> QuantLinear:
        """An empty shell shaped like ``float_module``, to be filled by ``load_state_dict``."""
        scheme = QuantScheme.from_dict(spec["scheme"])
        n, k = float_module.out_features, float_module.in_features
        has_bias = spec.get("has_bias", float_module.bias is not None)
        bias = torch.zeros(n) if has_bias else None
        qweight = placeholder_weight((n, k), scheme.weight)
        smooth = torch.ones(k) if spec.get("input_smooth") else None
        return cls(k, n, scheme, qweight, bias, _placeholder_qparams(scheme), smooth)

    def layer_spec(self) -> dict[str, Any]:
        # bias correction can give a bias-free layer a bias; smoothing adds an input scale
        spec = {**super().layer_spec(), "has_bias": self.bias is not None}
        return {**spec, "input_smooth": True} if self.input_smooth is not None else spec

    # -- kernel selection ------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Derive kernel-side data from the stored tensors and choose the kernel."""
        mode = self.scheme.mode
        self._fast, self._int4, self._w_bf16 = True, None, None
        # Paths fixed per machine, looked up once: forward only picks one (cheap, and nothing
        # for torch.compile to trace). cpu.int8_matmul: _int_mm with VNNI, else fp32 GEMMs.
        self._int8_path = kc.INT8_INT_MM if cpu.has_vnni() else kc.INT8_FP32_GEMM
        self._dequant_path = kc.dequant(cpu.dequant_dtype(), "matmul")
        if mode is QuantMode.STATIC:
            self._codes = ActivationCodes(
                self.scheme.activation, self.input_scale, self.input_zero_point
            )
        if mode is QuantMode.WEIGHT_ONLY and self._try_int4():
            return
        int8 = self.int8_weight()
        self._w_int8, self._w_scale = (None, None) if int8 is None else int8[:2]
        if mode is QuantMode.WEIGHT_ONLY:
            self._prepare_weight_only(int8)
        else:
            self._prepare_int8_gemm(int8)

    def _expansion_note(self, int8: Int8Weight) -> str:
        if int8.q is self.qweight:
            return ""
        note = f", {self.scheme.weight.format} codes expanded to int8 at load"
        return note + ("" if math.isinf(int8.sqnr_db) else f" ({int8.sqnr_db:.0f} dB)")

    def _prepare_weight_only(self, int8: Int8Weight | None) -> None:
        if int8 is None:
            self._fast = False
            self._fallback("weight-only kernel takes int8 per-channel symmetric weights")
            return
        if int8.sqnr_db < EXPANSION_MIN_SQNR_DB:
            # Groups of very different magnitude in a row: keep the exact values in bf16.
            self._w_bf16 = self.dequantized_weight().to(cpu.dequant_dtype())
            self._dequant_path = kc.dequant_at_load(self._w_bf16.dtype)
            self.kernel = (
                "bf16 GEMM on weights dequantized at load (int8 expansion would be only "
                f"{int8.sqnr_db:.0f} dB from the stored format)"
            )
            return
        self.kernel = (
            "aten._weight_int8pack_mm (bf16 activations; >=160 rows: dequant + bf16 GEMM"
            f"{self._expansion_note(int8)})"
        )
        if not cpu.supports_weight_int8pack(self.in_features):
            self._fast = False
            self._fallback(f"in_features={self.in_features} is not a multiple of 16")
        self._scale_bf16 = self._w_scale.to(torch.bfloat16)

    def _prepare_int8_gemm(self, int8: Int8Weight | None) -> None:
        """Static and dynamic modes: ``torch._int_mm`` with the zero-point/bias epilogue."""
        if int8 is None or int8.sqnr_db < EXPANSION_MIN_SQNR_DB:
            self._fast = False
            self._fallback("int8 GEMM takes weights with one symmetric scale per output channel")
            return
        gemm = "aten._int_mm" if cpu.has_vnni() else "exact fp32 GEMM on the int8 codes (no VNNI)"
        self.kernel = f"{gemm} (int8 x int8 -> int32{self._expansion_note(int8)})"
        if not cpu.has_int_mm():
            self._fast = False
            self._fallback("torch._int_mm is not available in this torch build")
        act = self.scheme.activation
        if self.scheme.mode is QuantMode.DYNAMIC:
            self._per_token = act.granularity_value.kind is GranularityKind.PER_TOKEN
            if self._fast and (act.format != "int8" or not act.symmetric):
                self._fast = False
                self._fallback("dynamic fast path takes symmetric int8 activations")
            return
        if not self._codes.fits_int8 and self._fast:
            self._fast = False
            self._fallback("activations wider than 8 bits")
        out_scale = self._w_scale * self._codes.scale
        colsum = self._w_int8.to(torch.int64).sum(dim=1).float()
        bias = torch.zeros_like(out_scale) if self.bias is None else self.bias
        self._out_scale = out_scale
        self._bias_eff = bias - self._codes.zero_point * out_scale * colsum

    def _try_int4(self) -> bool:
        """Uniform weights of <= 4 bits on ``aten._weight_int4pack_mm_for_cpu`` when it fits.

        2- and 3-bit codes are valid 4-bit codes, so W3/W2 group-wise schemes run on the same
        kernel exactly; per-channel scales are repeated over the largest group size that
        divides ``in_features``. Returns False (another kernel is chosen) when the shape does not
        fit, with the reason logged.
        """
        fmt = self.scheme.weight.number_format
        if not isinstance(fmt, IntFormat) or fmt.bits > 4:
            return False
        gran = self.scheme.weight.granularity_value
        scale, zp = self.weight_scale, self.weight_zero_point
        if gran.kind is GranularityKind.PER_GROUP:
            group = gran.group_size
        elif gran.kind is GranularityKind.PER_TENSOR or (
            gran.kind is GranularityKind.PER_CHANNEL and gran.axis == 0
        ):
            group = next((g for g in (256, 128, 64, 32) if self.in_features % g == 0), None)
            if group is not None:
                n_groups = self.in_features // group
                scale = scale.reshape(-1, 1).expand(self.out_features, n_groups)
                zp = zp.reshape(-1, 1).expand(self.out_features, n_groups)
        else:
            return False
        reason = cpu.int4_unsupported_reason(self.out_features, self.in_features, group)
        if reason is not None:
            log.info("QuantLinear %s: not on the int4 kernel: %s", self.scheme.name, reason)
            return False
        self.kernel = (
            "aten._weight_int4pack_mm_for_cpu (bf16 activations; >=160 rows: dequant + bf16 GEMM)"
        )
        self._int4 = cpu.prepack_int4(self.qweight, scale, zp, fmt.qmin, group)
        return True

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if shape[-1] != self.in_features:
            raise ValueError(
                f"QuantLinear expects inputs with last dimension {self.in_features}, "
                f"got shape {list(shape)}"
            )
        # Inference only, on every path alike: torch's int4/int8 kernels have no derivative
        # and the int8 epilogue writes in place (train with lowbit.qat instead).
        x2 = x.detach().reshape(-1, self.in_features)
        if self.input_smooth is not None:
            x2 = x2 * self.input_smooth
        path, y = self._matmul(x2, x.dtype)
        self._ran(path, x2.shape[0])
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def _matmul(self, x2: torch.Tensor, dtype: torch.dtype) -> tuple[KernelPath, torch.Tensor]:
        """``y = x2 @ W^T + b`` on this call's kernel (weight-only: bias added in the caller's
        ``dtype``), and that kernel's path."""
        mode = self.scheme.mode
        if not self._fast:  # weight-only references run fp32, the others exact fp64
            ref = kc.REFERENCE_FP32_MATMUL, kc.REFERENCE_FP64_MATMUL
            return ref[mode is not QuantMode.WEIGHT_ONLY], self._forward_reference(x2)
        if mode is QuantMode.WEIGHT_ONLY:
            path, y = self._weight_only(x2)
            return path, (y.to(dtype) if self.bias is None else y.to(dtype).add_(self.bias))
        path = self._int8_path
        if mode is QuantMode.DYNAMIC:
            qx, sx = cpu.quantize_dynamic_int8(x2, self._per_token)
            acc = cpu.int8_matmul(qx, self._w_int8)
            return path, cpu.dequantize_accumulator(acc, sx, self._w_scale, self.bias)
        acc = cpu.int8_matmul(self._codes(x2.float()), self._w_int8)
        return path, cpu.dequantize_accumulator(acc, None, self._out_scale, self._bias_eff)

    def _weight_only(self, x2: torch.Tensor) -> tuple[KernelPath, torch.Tensor]:
        """bf16 activations: a weight-pack kernel below ``WEIGHT_ONLY_DEQUANT_MIN_ROWS`` rows,
        dequantize + float GEMM from there on (or always, for weights dequantized at load)."""
        if self._w_bf16 is not None:
            w = self._w_bf16
            return self._dequant_path, nn.functional.linear(x2.to(w.dtype), w)
        packed = cpu.uses_weight_pack(x2.shape[0])
        if self._int4 is None:
            y = cpu.weight_int8_matmul(x2, self._w_int8, self._scale_bf16)
            return (kc.INT8_WEIGHT_PACK if packed else self._dequant_path), y
        if packed:
            return kc.INT4_WEIGHT_PACK, cpu.int4_matmul(x2, *self._int4)
        # The int4 kernel's cost grows linearly with rows (a GEMV per row); for large batches
        # one dequantize per call + a bf16 GEMM is faster (see RESULTS.md).
        w = self.dequantized_weight().to(cpu.dequant_dtype())
        return self._dequant_path, nn.functional.linear(x2.to(w.dtype), w)

    def _forward_reference(self, x2: torch.Tensor) -> torch.Tensor:
        """The numerical oracle: exact integer accumulation where activations are integers."""
        mode, x2 = self.scheme.mode, x2.float()
        w = self.dequantized_weight()
        if mode is QuantMode.WEIGHT_ONLY:  # bf16 activations, as the fast kernel sees them
            return nn.functional.linear(x2.to(torch.bfloat16).float(), w, self.bias)
        if mode is QuantMode.DYNAMIC:
            xd = fake_quantize_dynamic(x2, self.scheme.activation)
        else:
            c = self._codes
            xd = (c(x2).float() - c.zero_point) * c.scale
        return nn.functional.linear(
            xd.double(), w.double(), None if self.bias is None else self.bias.double()
        ).float()
