"""Pure-PyTorch reference kernels: the numerical oracle every fast path is tested against.

They compute integer accumulations *exactly* (int64 matmul, float64 convolution of integer values,
exact while ``|acc| < 2^53``) and are slow on purpose: clarity over speed.

>>> qx = torch.tensor([[1, -2]], dtype=torch.int8); qw = torch.tensor([[3, 4]], dtype=torch.int8)
>>> int8_matmul_ref(qx, qw)
tensor([[-5]], dtype=torch.int32)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["CONV_FN", "int8_matmul_ref", "int8_conv_ref", "weight_only_linear_ref"]

# functional convolution by number of spatial dims (shared by every conv path in lowbit)
CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def int8_matmul_ref(qx: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    """``acc[m, n] = sum_k qx[m, k] * qw[n, k]`` in int32, computed exactly in int64."""
    return (qx.to(torch.int64) @ qw.to(torch.int64).t()).to(torch.int32)


def int8_conv_ref(
    qx: torch.Tensor,
    x_zero_point: int,
    qw: torch.Tensor,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
) -> torch.Tensor:
    """Integer convolution ``acc = conv(qx - zx, qw)`` (zero padding of the *real* value 0).

    Returned as float64 holding exact integers: a float64 mantissa is exact up to 2^53, far above
    any int8 x int8 accumulation a real layer produces.
    """
    x = qx.to(torch.float64) - float(x_zero_point)
    w = qw.to(torch.float64)
    return CONV_FN[qw.dim() - 2](x, w, None, stride, padding, dilation, groups)


def weight_only_linear_ref(
    x: torch.Tensor, qw: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``y = x @ (qw * scale[:, None]).T + bias`` in float32 (dequantize, then matmul)."""
    w = qw.to(torch.float32) * scale.to(torch.float32).reshape(-1, 1)
    return F.linear(x.to(torch.float32), w, None if bias is None else bias.float())
