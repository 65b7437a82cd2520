"""How a layer's weight is rounded: nearest (RTN), GPTQ or AdaRound, for any lowbit format.

The math lives in :mod:`lowbit.algorithms`; this file adapts it to lowbit's formats and returns
the same :class:`QuantizedWeight` that ``quantize_weight`` would (codes plus bf16 scales, int8
zero points, fp16 codebooks), so the quantized layers, packing and save/load are unchanged.

GPTQ works for every format: uniform and grid formats fit their scales per group as the
columns are reached, k-means codebooks are fitted once on the float weight and GPTQ then picks
each value's codebook entry (the issue's "projection"). AdaRound learns up/down rounding, so it
needs a uniform grid; other formats are rejected by :func:`check_adaround`.

>>> from lowbit.weight_quant import dequantize_weight, quantize_weight
>>> w, x = torch.randn(8, 32), torch.randn(256, 32) @ torch.randn(32, 32)
>>> spec = TensorQuantSpec("int3", "per_channel")
>>> qw = gptq_weight(w, 2 * x.T @ x, spec)
>>> err = lambda q: float(((x @ (w - dequantize_weight(q, spec)).T) ** 2).sum())
>>> err(qw) < err(quantize_weight(w, spec, "w"))
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from lowbit.algorithms.adaround import adaround
from lowbit.algorithms.gptq import gptq
from lowbit.config import TensorQuantSpec
from lowbit.errors import ConfigError
from lowbit.formats import CodebookFormat, GridFormat, IntFormat
from lowbit.granularity import GranularityKind
from lowbit.grids import nearest_level
from lowbit.primitives import block_view, expand_params
from lowbit.weight_quant import (
    QuantizedWeight,
    dequantize_weight,
    encode_weight,
    quantize_weight,
)

__all__ = ["gptq_weight", "adaround_weight", "check_adaround", "elementwise_params"]


def _column_spec(spec: TensorQuantSpec) -> TensorQuantSpec:
    """The spec of one group of columns: per-channel params when the layer has groups."""
    if spec.granularity_value.kind is GranularityKind.PER_GROUP:
        return dataclasses.replace(spec, granularity="per_channel")
    return spec


def _cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if parts[0] is None else torch.cat(parts, dim=1)


def gptq_weight(
    weight: torch.Tensor,
    h: torch.Tensor,
    spec: TensorQuantSpec,
    *,
    block_size: int = 128,
    percdamp: float = 0.01,
    act_order: bool = False,
) -> QuantizedWeight:
    """GPTQ-rounded codes for ``weight`` (dim 0 = outputs) given ``H = 2XᵀX`` of its 2-D view."""
    w2d = weight.detach().float().reshape(weight.shape[0], -1)
    gran = spec.granularity_value
    group = gran.group_size if gran.kind is GranularityKind.PER_GROUP else None
    col_spec = _column_spec(spec)
    fixed = None
    if isinstance(spec.number_format, CodebookFormat):  # one k-means fit on the float weight
        fixed = quantize_weight(w2d, spec, "weight")

    def fit(cols: torch.Tensor, g: int) -> QuantizedWeight:
        if fixed is None:
            return quantize_weight(cols, col_spec, "weight")
        if fixed.scale is None:  # per-tensor / per-channel codebook: nothing to refit
            return fixed
        scale = cols.abs().amax(dim=1, keepdim=True).clamp(min=1e-12).to(torch.bfloat16)
        return QuantizedWeight(cols, scale, None, fixed.codebook)

    fmt = spec.number_format
    levels = torch.tensor(fmt.levels) if isinstance(fmt, GridFormat) else None

    def qdq(col: torch.Tensor, params: QuantizedWeight) -> torch.Tensor:
        # called once per column: inline the common formats (same values as encode+dequantize)
        if isinstance(fmt, IntFormat):
            s = params.scale.float().reshape(-1)
            z = 0.0 if params.zero_point is None else params.zero_point.float().reshape(-1)
            return (torch.clamp(torch.round(col / s) + z, fmt.qmin, fmt.qmax) - z) * s
        if levels is not None:
            s = params.scale.float().reshape(-1)
            return levels[nearest_level(col / s, levels)] * s
        q = encode_weight(col[:, None], col_spec, params)
        return dequantize_weight(q, col_spec)[:, 0]

    if group:  # a group's scales are fitted inside one lazy block: blocks hold whole groups
        block_size = max(group, block_size // group * group)
    q, groups = gptq(w2d, h, fit, qdq, group_size=group, block_size=block_size,
                     percdamp=percdamp, act_order=act_order)  # fmt: skip
    params = QuantizedWeight(
        w2d,
        _cat([g.scale for g in groups]) if group else groups[0].scale,
        _cat([g.zero_point for g in groups]) if group else groups[0].zero_point,
        groups[0].codebook,
    )
    return encode_weight(q.reshape(weight.shape), spec, params)


def check_adaround(spec: TensorQuantSpec, where: str) -> None:
    """AdaRound learns up/down rounding on a uniform grid; other formats get a clear error."""
    if not isinstance(spec.number_format, IntFormat):
        raise ConfigError(
            f"{where}: AdaRound rounds onto a uniform integer grid, not {spec.format!r}; use "
            "algorithm='gptq' for non-uniform grids and codebooks"
        )


def elementwise_params(qw: QuantizedWeight, shape: torch.Size, spec: TensorQuantSpec):
    """``(scale, zero_point)`` broadcast to every weight element (``shape``)."""
    rows = shape[0]
    cols = qw.qdata.numel() // rows
    block = spec.granularity_value.block_size((rows, cols))
    ones = block_view(torch.ones(rows, cols), block)
    s = (ones * expand_params(qw.scale.float(), block)).reshape(shape)
    z = (ones * expand_params(qw.zero_point.float(), block)).reshape(shape)
    return s, z


def adaround_weight(
    weight: torch.Tensor,
    spec: TensorQuantSpec,
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_float: torch.Tensor,
    x_quant: torch.Tensor,
    **options,
) -> QuantizedWeight:
    """AdaRound codes on the round-to-nearest scales/zero points of ``spec``."""
    fmt = spec.int_format
    rtn = quantize_weight(weight, spec, "weight")
    s, z = elementwise_params(rtn, weight.shape, spec)
    up = adaround(weight, s, z, fmt.qmin, fmt.qmax, op, x_float, x_quant, **options)
    codes = torch.clamp(torch.floor(weight.detach().float() / s) + up + z, fmt.qmin, fmt.qmax)
    return QuantizedWeight(codes.to(rtn.qdata.dtype), rtn.scale, rtn.zero_point)
