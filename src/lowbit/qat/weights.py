"""Weight fake quantizers for QAT, one per format kind, each with its conversion.

* :class:`LSQWeight` (uniform ints): learned step per block (LSQ), zero points fixed at init.
* :class:`GridWeight` (NF/pot/binary/ternary): the post-training quantizer of the *current*
  shadow weight in the forward (XNOR-Net's α, TWN's Δ and α, absmax for NF/pot are recomputed
  every step) and the straight-through estimator backward: ``∂ŵ/∂w = 1``.
* :class:`CodebookWeight` (k-means): learned centroids (Deep Compression's fine-tuning: each
  centroid's gradient is the sum of its members' gradients), assignments to the nearest
  centroid every step, straight-through to the shadow weight so assignments can move.

``quantized()`` returns exactly the codes and parameters the forward used, so ``convert``
builds an integer layer that computes what the fake-quant layer did.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.config import TensorQuantSpec
from lowbit.formats import CodebookFormat, GridFormat
from lowbit.grids import nearest_level
from lowbit.primitives import block_minmax, block_view, choose_qparams, expand_params, quantize
from lowbit.qat.fake_quant import cast_ste, lsq_fake_quantize, lsq_grad_factor
from lowbit.weight_quant import (
    QuantizedWeight,
    codebook_groups,
    dequantize_weight,
    quantize_weight,
)

__all__ = ["LSQWeight", "GridWeight", "CodebookWeight", "make_weight_quantizer"]


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1)


class LSQWeight(nn.Module):
    """Uniform integer weights with a learned step per block."""

    def __init__(self, weight: torch.Tensor, spec: TensorQuantSpec):
        super().__init__()
        self.spec, fmt = spec, spec.int_format
        w2d = _rows(weight.detach())
        self._block = spec.granularity_value.block_size(tuple(w2d.shape))
        scale, zp = choose_qparams(*block_minmax(w2d, self._block), fmt, spec.symmetric)
        self.scale = nn.Parameter(scale)
        self.register_buffer("zero_point", zp.to(torch.int32))
        self._g = lsq_grad_factor(w2d.numel() // scale.numel(), fmt.qmax)

    def _step(self) -> torch.Tensor:
        s = self.scale.abs().clamp(min=1e-12)
        # stored in bf16 below 8 bits (weight_quant): train with the value that will be stored
        return cast_ste(s, torch.bfloat16) if self.spec.int_format.bits < 8 else s

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        fmt = self.spec.int_format
        wq = lsq_fake_quantize(
            _rows(w), self._step(), self.zero_point, fmt.qmin, fmt.qmax, self._block, self._g
        )
        return wq.reshape(w.shape)

    @torch.no_grad()
    def quantized(self, w: torch.Tensor) -> QuantizedWeight:
        fmt, s = self.spec.int_format, self._step()
        q = quantize(_rows(w.detach()), s.float(), self.zero_point, fmt, self._block)
        low_bit = fmt.bits < 8
        return QuantizedWeight(
            q.reshape(w.shape),
            s.to(torch.bfloat16) if low_bit else s.float(),
            self.zero_point.to(torch.int8 if low_bit else torch.int32),
        )


class GridWeight(nn.Module):
    """Fixed grids: post-training quantizer forward, straight-through backward."""

    def __init__(self, weight: torch.Tensor, spec: TensorQuantSpec):
        super().__init__()
        self.spec = spec

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        w_hat = dequantize_weight(self.quantized(w), self.spec)
        return w + (w_hat - w).detach()

    @torch.no_grad()
    def quantized(self, w: torch.Tensor) -> QuantizedWeight:
        return quantize_weight(w.detach(), self.spec, "weight")


class CodebookWeight(nn.Module):
    """k-means codebooks whose centroids train; assignments follow the shadow weight."""

    def __init__(self, weight: torch.Tensor, spec: TensorQuantSpec):
        super().__init__()
        self.spec = spec
        init = quantize_weight(weight.detach(), spec, "weight")  # k-means++ and Lloyd
        self.codebook = nn.Parameter(init.codebook.float())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        w2d = _rows(w)
        groups, scale = codebook_groups(w2d.detach(), self.spec)
        book = cast_ste(self.codebook, torch.float16)  # stored in fp16
        with torch.no_grad():
            codes = nearest_level(groups, book.detach())
        values = book.gather(1, codes) if book.shape[0] > 1 else book[0][codes]
        if scale is not None:  # per-group scales over the shared codebook, as dequantize_weight
            block = self.spec.granularity_value.block_size(tuple(w2d.shape))
            values = block_view(values.reshape(w2d.shape), block) * expand_params(
                scale.float(), block
            )
        values = values.reshape(w.shape)
        return values + (w - w.detach())  # gradient to the centroids and, straight through, to w

    @torch.no_grad()
    def quantized(self, w: torch.Tensor) -> QuantizedWeight:
        groups, scale = codebook_groups(_rows(w.detach()), self.spec)
        book = self.codebook.to(torch.float16)
        codes = nearest_level(groups, book.float())
        return QuantizedWeight(codes.reshape(w.shape).to(torch.uint8), scale, codebook=book)


def make_weight_quantizer(weight: torch.Tensor, spec: TensorQuantSpec) -> nn.Module:
    fmt = spec.number_format
    if isinstance(fmt, CodebookFormat):
        return CodebookWeight(weight, spec)
    if isinstance(fmt, GridFormat):
        return GridWeight(weight, spec)
    return LSQWeight(weight, spec)
