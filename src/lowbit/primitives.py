"""Affine quantization primitives shared by every layer and algorithm.

Convention (used everywhere in lowbit)::

    x ≈ (q - zero_point) * scale,    q = clamp(round(x / scale) + zero_point, qmin, qmax)

``scale`` and ``zero_point`` have one entry per block (see :mod:`lowbit.granularity`): a tensor of
shape ``[s // b for s, b in zip(x.shape, block_size)]``.

>>> x = torch.tensor([[-1.0, 0.5], [2.0, 4.0]])
>>> fmt = get_format("int8")
>>> lo, hi = block_minmax(x, (1, 2))                   # per-row ranges
>>> scale, zp = choose_qparams(lo, hi, fmt, symmetric=True)
>>> q = quantize(x, scale, zp, fmt, (1, 2))
>>> q.dtype, dequantize(q, scale, zp, (1, 2)).sub(x).abs().max() <= scale.max() / 2
(torch.int8, tensor(True))
"""

from __future__ import annotations

import torch

from lowbit.errors import ConfigError
from lowbit.formats import IntFormat

__all__ = [
    "block_view",
    "expand_params",
    "block_minmax",
    "choose_qparams",
    "quantize",
    "dequantize",
    "fake_quantize",
]

_EPS = torch.finfo(torch.float32).eps


def _check_blocks(shape: torch.Size, block_size: tuple[int, ...]) -> None:
    if len(block_size) != len(shape):
        raise ConfigError(
            f"block_size {block_size} has {len(block_size)} dims, tensor has {len(shape)}"
        )
    for s, b in zip(shape, block_size, strict=True):
        if b < 1 or s % b:
            raise ConfigError(f"block_size {tuple(block_size)} does not tile shape {list(shape)}")


def block_view(x: torch.Tensor, block_size: tuple[int, ...]) -> torch.Tensor:
    """View ``x`` as ``(n0, b0, n1, b1, ...)`` where ``n_i = shape_i // b_i``."""
    _check_blocks(x.shape, block_size)
    inter: list[int] = []
    for s, b in zip(x.shape, block_size, strict=True):
        inter += [s // b, b]
    return x.reshape(inter)


def expand_params(p: torch.Tensor, block_size: tuple[int, ...]) -> torch.Tensor:
    """Reshape a per-block parameter ``(n0, n1, ...)`` to ``(n0, 1, n1, 1, ...)`` for broadcasting."""
    inter: list[int] = []
    for n in p.shape:
        inter += [n, 1]
    return p.reshape(inter) if p.dim() == len(block_size) else p.reshape([1] * 2 * len(block_size))


def block_minmax(x: torch.Tensor, block_size: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and maximum of every block; both of shape ``shape // block_size``."""
    v = block_view(x.detach(), block_size)
    dims = tuple(range(1, v.dim(), 2))
    return v.amin(dim=dims), v.amax(dim=dims)


def choose_qparams(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    fmt: IntFormat,
    symmetric: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that cover ``[min_val, max_val]`` (widened to include 0).

    Symmetric: zero point at the grid centre ``z`` (0 for signed formats, 2^(b-1) for unsigned) and
    ``scale = max(|min|, |max|) / min(qmax - z, z - qmin)`` (int8: ``amax / 127``). Asymmetric: ``scale = (max - min) / (qmax - qmin)``,
    ``zero_point = qmin - round(min / scale)``. Zero stays exactly representable in both cases.
    """
    min_val = torch.clamp(min_val.float(), max=0.0)
    max_val = torch.clamp(max_val.float(), min=0.0)
    if symmetric:
        amax = torch.maximum(-min_val, max_val)
        zp_value = 0 if fmt.signed else (fmt.qmax + fmt.qmin + 1) // 2
        half = min(fmt.qmax - zp_value, zp_value - fmt.qmin)
        scale = torch.clamp(amax / half, min=_EPS)
        zero_point = torch.full_like(scale, zp_value, dtype=torch.int32)
        return scale, zero_point
    scale = torch.clamp((max_val - min_val) / (fmt.qmax - fmt.qmin), min=_EPS)
    zero_point = torch.clamp(fmt.qmin - torch.round(min_val / scale), fmt.qmin, fmt.qmax)
    return scale, zero_point.to(torch.int32)


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    fmt: IntFormat,
    block_size: tuple[int, ...],
) -> torch.Tensor:
    """``q = clamp(round(x / scale) + zero_point, qmin, qmax)`` stored in ``fmt.storage_dtype``."""
    v = block_view(x, block_size)
    q = torch.round(v / expand_params(scale, block_size)) + expand_params(zero_point, block_size)
    return q.clamp_(fmt.qmin, fmt.qmax).reshape(x.shape).to(fmt.storage_dtype)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    block_size: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``x = (q - zero_point) * scale`` in ``dtype``."""
    v = block_view(q, block_size).to(torch.float32)
    x = (v - expand_params(zero_point, block_size)) * expand_params(scale, block_size)
    return x.reshape(q.shape).to(dtype)


class _FakeQuantizeSTE(torch.autograd.Function):
    """Forward: quantize-dequantize. Backward: straight-through inside the range, 0 outside."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, fmt, block_size):  # noqa: D401 - autograd signature
        v = block_view(x, block_size)
        s = expand_params(scale, block_size).to(x.dtype)
        zp = expand_params(zero_point, block_size).to(x.dtype)
        q = torch.round(v / s) + zp
        inside = (q >= fmt.qmin) & (q <= fmt.qmax)
        ctx.save_for_backward(inside)
        out = (q.clamp(fmt.qmin, fmt.qmax) - zp) * s
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx, grad_out):
        (inside,) = ctx.saved_tensors
        grad = grad_out.reshape(inside.shape) * inside
        return grad.reshape(grad_out.shape), None, None, None, None


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    fmt: IntFormat,
    block_size: tuple[int, ...],
) -> torch.Tensor:
    """Quantize then dequantize, with a straight-through gradient (zero where ``x`` was clipped).

    ``∂out/∂x = 1`` where ``qmin <= round(x/scale) + zp <= qmax``, else ``0`` (Bengio et al. 2013).
    """
    return _FakeQuantizeSTE.apply(x, scale, zero_point, fmt, block_size)
