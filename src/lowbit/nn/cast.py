"""16-bit float passthrough layers (``FP16``, ``BF16`` presets): weights stored in half precision.

* bf16: weights, activations and the matmul/conv run in bf16 (AVX-512 BF16 makes this ~2-3x faster
  than fp32 here); outputs are cast back to the input dtype.
* fp16: this CPU has no fast fp16 GEMM for batches (oneDNN's fp16 path is ~10x slower than fp32),
  so fp16 weights are multiplied natively only for matrix-vector products (``rows <= 4``, where
  halving the bytes read wins) and are upcast to fp32 otherwise. The size halves either way.

>>> layer = CastLayer.from_float(nn.Linear(8, 4), get_preset("BF16"))
>>> layer.weight.dtype, layer(torch.randn(2, 8)).dtype
(torch.bfloat16, torch.float32)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lowbit.config import QuantScheme
from lowbit.errors import InvalidModelError
from lowbit.formats import get_format
from lowbit.kernels import cpu
from lowbit.kernels.reference import CONV_FN
from lowbit.nn import kernel_calls as kc
from lowbit.nn.base import QuantModule, check_finite

__all__ = ["CastLayer"]

_FP16_NATIVE_MAX_ROWS = 4  # measured crossover of fp16 GEMV vs fp32 GEMM (benchmarks/RESULTS.md)


class CastLayer(QuantModule):
    """A Linear/Conv1d/Conv2d whose weight and bias are stored as fp16 or bf16."""

    def __init__(self, module: nn.Linear | nn.Conv1d | nn.Conv2d, scheme: QuantScheme):
        super().__init__()
        self.scheme = scheme
        self.dtype = get_format(scheme.compute_dtype).torch_dtype
        self.is_linear = isinstance(module, nn.Linear)
        if not self.is_linear:
            if module.padding_mode != "zeros":
                raise ValueError("CastLayer takes zero-padded convolutions")
            self.conv_args = (module.stride, module.padding, module.dilation, module.groups)
            self.dims = module.weight.dim() - 2
        self.weight = nn.Parameter(module.weight.detach().to(self.dtype), requires_grad=False)
        b = module.bias
        self.bias = (
            None if b is None else nn.Parameter(b.detach().to(self.dtype), requires_grad=False)
        )
        self.in_features = module.weight.shape[1] * (1 if self.is_linear else module.groups)
        self._prepare()

    _derived = ("_paths",)

    def _prepare(self) -> None:
        """The kernel names of this machine (a pickled layer may be loaded on another)."""
        op = "matmul" if self.is_linear else "conv"
        # by compute dtype, built once: forward only looks one up
        self._paths = {dt: kc.cast(dt, self.dtype, op) for dt in (self.dtype, torch.float32)}
        self.kernel = f"{self.scheme.compute_dtype} {op}"
        if self.dtype is torch.bfloat16 and not cpu.native_bf16():
            self.kernel = f"fp32 {op} on upcast bf16 weights (bf16 is not native on this CPU)"
        if self.dtype is torch.float16:
            self.kernel = "fp16 GEMV for <=4 rows, else fp32 compute on upcast weights"

    @classmethod
    def from_float(
        cls, module: nn.Module, scheme: QuantScheme, input_qparams=None, name: str = "layer"
    ) -> CastLayer:
        check_finite(module.weight, f"{name}.weight")
        if module.bias is not None:
            check_finite(module.bias, f"{name}.bias")
        layer = cls(module, scheme)
        # fp16 tops out at 65504: a larger weight would silently become inf.
        for what, t in (("weight", layer.weight), ("bias", layer.bias)):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise InvalidModelError(
                    f"{name}.{what} has values outside the {scheme.compute_dtype} range "
                    f"(max |value| {float(getattr(module, what).detach().abs().max()):.3g}); use BF16 "
                    "or keep this layer in float with exclude=[...]"
                )
        return layer

    @classmethod
    def from_spec(cls, spec: dict[str, Any], float_module: nn.Module) -> CastLayer:
        return cls(float_module, QuantScheme.from_dict(spec["scheme"]))

    def dequantized_weight(self) -> torch.Tensor:
        """The stored fp16/bf16 weight as float32 (what the analysis compares with float)."""
        return self.weight.detach().float()

    def _rows(self, x: torch.Tensor) -> int:
        """Tokens of a Linear input, batch x positions of a conv input."""
        return x.numel() // (x.shape[-1] if self.is_linear else x.shape[1])

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        if self.dtype is torch.bfloat16:
            # bf16 storage; compute in bf16 only where the CPU does it natively (emulated bf16
            # GEMMs measured ~8-10x slower than fp32 on an AVX2-only EPYC)
            return torch.bfloat16 if cpu.native_bf16() else torch.float32
        rows = self._rows(x) if self.is_linear else _FP16_NATIVE_MAX_ROWS + 1
        return torch.float16 if rows <= _FP16_NATIVE_MAX_ROWS else torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_linear and x.shape[-1] != self.in_features:
            raise ValueError(
                f"CastLayer expects inputs with last dimension {self.in_features}, "
                f"got shape {list(x.shape)}"
            )
        if not self.is_linear and (x.dim() != self.dims + 2 or x.shape[1] != self.in_features):
            raise ValueError(
                f"CastLayer expects [batch, {self.in_features}, *{self.dims} spatial "
                f"dims] inputs, got shape {list(x.shape)}"
            )
        cd, out_dtype = self._compute_dtype(x), x.dtype
        self._ran(self._paths[cd], self._rows(x))
        emulated = self.dtype is torch.bfloat16 and cd is torch.float32
        if emulated:  # round inputs (and outputs, below) to bf16: the numerics of a bf16 CPU
            x = x.to(torch.bfloat16)
        w = self.weight.to(cd)
        b = None if self.bias is None else self.bias.to(cd)
        if self.is_linear:
            y = nn.functional.linear(x.to(cd), w, b)
        else:
            y = CONV_FN[self.dims](x.to(cd), w, b, *self.conv_args)
        return (y.to(torch.bfloat16) if emulated else y).to(out_dtype)
