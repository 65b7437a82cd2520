"""Conv + BatchNorm trained folded, with BatchNorm statistics frozen after ``freeze_after`` steps.

Following Jacob et al. 2018 and Krishnamoorthi 2018: the convolution always uses the weight
folded with the running statistics, ``w' = w * γ / σ_run`` (fake-quantized, as it will be
stored), and bias ``b' = β + (b - μ) * γ / σ``. For the first ``freeze_after`` training steps
``μ, σ`` are the batch's statistics (from a float convolution of the same input, which also
updates the running ones) and the output is rescaled by ``σ_run / σ_B``; after that the running
statistics are frozen, so training sees exactly the folded layer it will be converted to.

>>> conv, bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
>>> layer = QATConvBN(conv, bn, get_preset("W8A8"), "conv", freeze_after=100)
>>> layer(torch.randn(4, 3, 6, 6)).shape
torch.Size([4, 8, 4, 4])
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lowbit.config import QuantScheme
from lowbit.nn import QuantConv
from lowbit.nn.base import QuantizedWeight
from lowbit.qat.modules import QATConv

__all__ = ["QATConvBN"]


class QATConvBN(QATConv):
    """A convolution and its BatchNorm under QAT; converts to one folded :class:`QuantConv`."""

    def __init__(
        self,
        conv: nn.Conv1d | nn.Conv2d,
        bn: nn.BatchNorm1d | nn.BatchNorm2d,
        scheme: QuantScheme,
        name: str,
        freeze_after: int,
    ):
        # steps start from the folded weight, the one that will be quantized
        with torch.no_grad():
            folded, _ = _fold(conv.weight, conv.bias, bn, bn.running_mean, bn.running_var)
        super().__init__(conv, scheme, name, quantizer_weight=folded)
        self.bn = copy.deepcopy(bn)
        self.freeze_after = freeze_after
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._geometry["bias"] = True  # the folded layer always has a bias

    def _fold(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _fold(self.weight, self.bias, self.bn, mean, var)

    def _statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch statistics (updating the running ones) until frozen, then the running ones."""
        bn = self.bn
        if not self.training or int(self.steps) >= self.freeze_after:
            return bn.running_mean, bn.running_var
        y = self._op(x, self.weight, self.bias)  # what the float conv feeds its BatchNorm
        dims = [0] + list(range(2, y.dim()))
        mean, var = y.mean(dims), y.var(dims, unbiased=False)
        with torch.no_grad():
            n = y.numel() // y.shape[1]
            # momentum=None is PyTorch's cumulative average
            m = bn.momentum if bn.momentum is not None else 1.0 / float(self.steps + 1)
            bn.running_mean.mul_(1 - m).add_(m * mean.detach())
            bn.running_var.mul_(1 - m).add_(m * var.detach() * n / max(n - 1, 1))
            self.steps += 1
        return mean, var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = self.fake_input(x)
        mean, var = self._statistics(xq)
        bn = self.bn
        # The weight is always folded with the running statistics (the steps belong to it);
        # during the batch-statistics phase the output is rescaled by σ_run / σ_B, so the layer
        # computes BN(conv(x)) with batch statistics (Krishnamoorthi 2018, section 3.2).
        weight, _ = self._fold(bn.running_mean, bn.running_var)
        _, bias = self._fold(mean, var)
        y = self._op(xq, self.weight_quantizer(weight), None)
        if mean is not bn.running_mean:
            ratio = torch.sqrt((bn.running_var + bn.eps) / (var + bn.eps))
            y = y * ratio.reshape([1, -1] + [1] * self.dims)
        return y + bias.reshape([1, -1] + [1] * self.dims)

    def quantizer_input(self) -> torch.Tensor:
        """The folded weight (running statistics): what the weight quantizer's steps belong to."""
        return self._fold(self.bn.running_mean, self.bn.running_var)[0]

    def quantized_weight(self) -> QuantizedWeight:
        return self.weight_quantizer.quantized(self.quantizer_input().detach())

    def to_quantized(self) -> QuantConv:
        _, bias = self._fold(self.bn.running_mean, self.bn.running_var)
        shell = (nn.Conv1d if self.dims == 1 else nn.Conv2d)(**self._geometry, device="meta")
        return QuantConv(
            shell, self.scheme, self.quantized_weight(), bias.detach(), self.input_qparams()
        )


def _fold(weight, bias, bn, mean, var) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w * γ/σ, β + (b - μ) * γ/σ)`` with ``σ = sqrt(var + eps)``; differentiable."""
    gamma = bn.weight if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(var)
    factor = gamma * torch.rsqrt(var + bn.eps)
    bias = bias if bias is not None else torch.zeros_like(mean)
    shape = [-1] + [1] * (weight.dim() - 1)
    return weight * factor.reshape(shape), beta + (bias - mean) * factor
