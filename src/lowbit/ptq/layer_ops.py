"""What the PTQ algorithms need to know about a Linear or Conv layer, in one place.

Every layer is a linear map of its input: ``y = op(x, W) + b`` where ``op`` is ``F.linear`` or
``F.conv{1,2}d`` with the layer's stride/padding/groups. ``matmul_rows`` turns a batch of inputs
into the rows ``X`` with ``y = X Wᵀ`` for the 2-D weight view (im2col for convolutions), which
is what GPTQ's Hessian ``2XᵀX`` and AWQ's search are built from.

>>> conv = nn.Conv2d(3, 4, 3, padding=1)
>>> x = torch.randn(2, 3, 5, 5)
>>> rows = matmul_rows(conv, x)
>>> y = rows @ conv.weight.reshape(4, -1).T
>>> bool(torch.allclose(y, layer_op(conv)(x, conv.weight).permute(0, 2, 3, 1).reshape(-1, 4), atol=1e-5))
True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.config import QuantMode, QuantScheme
from lowbit.nn.base import fake_quantize_dynamic
from lowbit.primitives import fake_quantize

__all__ = ["layer_op", "matmul_rows", "supports_rows", "channel_mean", "input_quantizer"]


def layer_op(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``op(x, W)``: the layer's output without its bias, for any weight of its shape."""
    if isinstance(module, nn.Linear):
        return lambda x, w: F.linear(x, w)
    # quantize leaves convs with non-zero padding modes or string padding in float
    # (nn.unsupported_reason), so zero padding by integers is all there is to handle here
    conv = F.conv1d if isinstance(module, nn.Conv1d) else F.conv2d
    return lambda x, w: conv(
        x, w, None, module.stride, module.padding, module.dilation, module.groups
    )


def supports_rows(module: nn.Module) -> bool:
    """Whether ``matmul_rows`` applies (dense layers: Linear, or convs with ``groups == 1``)."""
    return isinstance(module, nn.Linear) or module.groups == 1


def matmul_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``X`` with ``op(x, W) == X @ W.reshape(out, -1).T`` (one row per output position)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features)
    if isinstance(module, nn.Conv1d):  # as a 2-D conv of height 1
        cols = F.unfold(x.unsqueeze(2), (1, module.kernel_size[0]), (1, module.dilation[0]),
                        (0, module.padding[0]), (1, module.stride[0]))  # fmt: skip
    else:
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def channel_mean(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """Mean of a layer output over everything but its channel dimension."""
    if isinstance(module, nn.Linear):
        return y.reshape(-1, y.shape[-1]).mean(dim=0)
    return y.transpose(0, 1).reshape(y.shape[1], -1).mean(dim=1)


def input_quantizer(
    scheme: QuantScheme, qparams: tuple[torch.Tensor, torch.Tensor] | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The layer's activation quantization as a float function (identity for weight-only)."""
    spec = scheme.activation
    if scheme.mode is QuantMode.STATIC and qparams is not None:
        scale, zp = qparams
        return lambda x: fake_quantize(x, scale, zp, spec.int_format, tuple(x.shape))
    if scheme.mode is QuantMode.DYNAMIC:
        return lambda x: fake_quantize_dynamic(x, spec)
    return lambda x: x
