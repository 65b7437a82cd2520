"""4-bit codes for the ONNX export: ``MatMulNBits`` tensors, and exact 4-bit forms of int8 codes.

ONNX Runtime's ``MatMulNBits`` (``com.microsoft``) stores an ``[N, K]`` weight in blocks of
``block`` input features, ``w = (q - z) * s`` with one scale and one zero point per block and
codes of 4 or 8 bits. Uniform integer formats of at most 4 bits map onto it as they are. Other
formats go through the layer's int8 expansion ``w = q8 * s8[n]`` (:meth:`QuantModule.int8_weight`),
which :func:`fit_4bit` writes in 4 bits whenever every block allows it exactly: with ``g`` the
greatest common divisor of a block's codes, ``u = q8 / g`` must span at most 16 consecutive
integers, 0 among them; then ``q = u + z``, ``z = -min(u, 0)``, ``s = s8 * g`` give back
``(q - z) * s = q8 * s8``. Binary (``u`` in {-1, 1}), ternary ({-1, 0, 1}) and symmetric int4
codes (W4A8) always fit; NF4, power-of-two grids and k-means codebooks do not (their levels
are not evenly spaced, and ONNX has no 4-bit lookup op), so they stay 8-bit.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lowbit.export.onnx_ops import pack_codes
from lowbit.formats import IntFormat
from lowbit.granularity import GranularityKind
from lowbit.nn import QuantLinear, QuantModule

__all__ = ["BLOCKS", "Fit4", "fit_4bit", "int8_as_nbits", "weight_only_nbits", "channel_codes"]

BLOCKS = (256, 128, 64, 32, 16)  # MatMulNBits block sizes (powers of two >= 16)


class Fit4(NamedTuple):
    """``q8[n, j] = (codes[n, j] - zero[n, b]) * mult[n, b]`` for ``j`` in block ``b``."""

    codes: torch.Tensor  # [N, K] in 0..15
    zero: torch.Tensor  # [N, K / block] in 0..15
    mult: torch.Tensor  # [N, K / block] >= 1


def fit_4bit(q8: torch.Tensor, block: int) -> Fit4 | None:
    """The exact 4-bit form of integer codes ``q8 [N, K]`` in blocks of ``block``, or None.

    >>> f = fit_4bit(torch.tensor([[-127, 127, 0, -127]]), 4)
    >>> f.codes.tolist(), f.zero.tolist(), f.mult.tolist()
    ([[0, 2, 1, 0]], [[1]], [[127]])
    >>> fit_4bit(torch.tensor([[-3, 16, 1, 0]]), 4) is None  # 19 steps apart: no 4-bit grid
    True
    """
    n, k = q8.shape
    v = q8.to(torch.int64).reshape(n, k // block, block)
    g = v[..., 0].abs()
    for j in range(1, block):  # torch.gcd has no reduction; block <= 256
        g = torch.gcd(g, v[..., j])
    g = torch.where(g == 0, torch.ones_like(g), g)
    u = v // g.unsqueeze(-1)
    lo, hi = u.amin(-1).clamp(max=0), u.amax(-1).clamp(min=0)
    if bool((hi - lo > 15).any()):
        return None
    return Fit4((u - lo.unsqueeze(-1)).reshape(n, k), -lo, g)


def _layout(codes, zero, scale, k: int, block: int, bits: int) -> dict:
    """``MatMulNBits`` inputs from ``[N, K]`` codes and per-block (or per-row) zeros and scales."""
    n, blocks = codes.shape[0], k // block
    scale = scale.reshape(n, -1).expand(n, blocks) if scale.numel() in (1, n) else scale
    zero = zero.reshape(-1, 1).expand(n, blocks) if zero.numel() in (1, n) else zero
    return {
        "packed": pack_codes(codes, bits).reshape(n, blocks, -1),
        "scales": scale.reshape(n, blocks).reshape(-1).float().contiguous(),
        "zero_points": pack_codes(zero.reshape(n, blocks), bits),
        "attrs": {"k": k, "bits": bits, "block": block},
    }


def int8_as_nbits(q8: torch.Tensor, s8: torch.Tensor) -> dict | None:
    """4-bit ``MatMulNBits`` tensors that reproduce int8 codes ``q8 [N, K]`` with ``[N]``
    scales exactly (the largest block that fits), or None when no block does."""
    k = q8.shape[1]
    for block in (b for b in BLOCKS if k % b == 0):
        fit = fit_4bit(q8, block)
        if fit is not None:
            scale = s8.float().reshape(-1, 1) * fit.mult
            return _layout(fit.codes, fit.zero, scale, k, block, 4)
    return None


def _uniform_4bit(mod: QuantLinear) -> dict | None:
    """The layer's own codes, for uniform integer formats of <= 4 bits."""
    k, fmt = mod.in_features, mod.scheme.weight.number_format
    gran = mod.scheme.weight.granularity_value
    if gran.kind is GranularityKind.PER_GROUP:
        block = gran.group_size
        if block not in BLOCKS or k % block:
            return None
    elif gran.kind is GranularityKind.PER_TENSOR or (
        gran.kind is GranularityKind.PER_CHANNEL and gran.axis == 0
    ):
        block = next((b for b in BLOCKS if k % b == 0), None)
        if block is None:
            return None
    else:
        return None
    zp = mod._quantized_weight().zero_point
    codes = mod.qweight.to(torch.int32) - fmt.qmin
    zero = (torch.zeros(1) if zp is None else zp.to(torch.int32)) - fmt.qmin
    return _layout(codes, zero, mod.weight_scale.float(), k, block, 4)


def weight_only_nbits(mod: QuantLinear, int8) -> dict | None:
    """``MatMulNBits`` tensors for a weight-only Linear: its own codes for uniform formats of
    <= 4 bits (per tensor, per channel, groups of 16..256), else its int8 expansion
    ``int8 = (q8, s8)`` in 4 bits when it fits exactly (:func:`fit_4bit`) and the format has
    codes of <= 4 bits, else in 8 bits; None when ``in_features`` is not a multiple of 16."""
    fmt = mod.scheme.weight.number_format
    if isinstance(fmt, IntFormat) and fmt.bits <= 4:
        nb = _uniform_4bit(mod)
        if nb is not None:
            return nb
    if int8 is None:
        return None
    q8, s8 = int8
    nb = int8_as_nbits(q8, s8) if getattr(fmt, "bits", 8) <= 4 else None
    k = mod.in_features
    block = next((b for b in BLOCKS if k % b == 0), None)
    if nb is None and block is not None:
        nb = _layout(q8.to(torch.int32) + 128, torch.full((1,), 128), s8, k, block, 8)
    return nb


def channel_codes(mod: QuantModule, int8) -> dict | None:
    """4-bit codes per output channel for ``DequantizeLinear(q, s, z, axis=0)``: ``qcodes``
    (uint8, 0..15, the weight's shape), ``w_zero`` and ``w_scale`` (``[out]``), exactly the
    layer's weights, or None. The layer's own codes for uniform formats of <= 4 bits per tensor
    or per channel; else its int8 expansion ``int8 = (q8, s8)`` when it fits (:func:`fit_4bit`).
    """
    fmt = mod.scheme.weight.number_format
    gran = mod.scheme.weight.granularity_value
    qw, out = mod._quantized_weight(), mod.qweight.shape[0]
    per_row = gran.kind is GranularityKind.PER_TENSOR or (
        gran.kind is GranularityKind.PER_CHANNEL and gran.axis == 0
    )
    if isinstance(fmt, IntFormat) and fmt.bits <= 4 and per_row and qw.scale is not None:
        zero = torch.zeros(1) if qw.zero_point is None else qw.zero_point.float()
        return {"qcodes": (mod.qweight.to(torch.int32) - fmt.qmin).to(torch.uint8),
                "w_zero": (zero.reshape(-1) - fmt.qmin).expand(out).to(torch.uint8),
                "w_scale": qw.scale.float().reshape(-1).expand(out).contiguous()}  # fmt: skip
    if int8 is None:
        return None
    q8, s8 = int8
    fit = fit_4bit(q8.reshape(out, -1), q8[0].numel())
    if fit is None:
        return None
    return {"qcodes": fit.codes.reshape(q8.shape).to(torch.uint8),
            "w_zero": fit.zero.reshape(-1).to(torch.uint8),
            "w_scale": s8.float() * fit.mult.reshape(-1)}  # fmt: skip
