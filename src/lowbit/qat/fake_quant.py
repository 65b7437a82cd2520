"""Differentiable fake quantization for QAT: straight-through rounding and LSQ step sizes.

LSQ (Esser et al. 2020, "Learned Step Size Quantization"):
``x̂ = (clamp(round(x/s) + z, Qn, Qp) - z) * s`` with the straight-through estimator for round,
so ``∂x̂/∂x = 1`` inside the grid and 0 where ``x`` is clipped, and

    ∂x̂/∂s = round(x/s) - x/s   inside,    Qn - z or Qp - z   where clipped,

scaled by ``g = 1 / sqrt(N * Qp)`` (N = values sharing the step) so the step learns at the pace
of the weights. Both come out of autograd through two identities, no custom backward:
``round_ste(v) = v + (round(v) - v).detach()`` and ``grad_scale(s, g) = s*g + (s - s*g).detach()``.

>>> s = torch.tensor(0.5, requires_grad=True)
>>> y = lsq_fake_quantize(torch.tensor([0.3, 9.0]), s, torch.tensor(0.0), -8, 7, (1,), 1.0)
>>> y.tolist()
[0.5, 3.5]
"""

from __future__ import annotations

import math

import torch

from lowbit.primitives import block_view, expand_params

__all__ = [
    "round_ste",
    "grad_scale",
    "cast_ste",
    "lsq_fake_quantize",
    "lsq_grad_factor",
    "pact_fake_quantize",
]


def round_ste(v: torch.Tensor) -> torch.Tensor:
    """``round(v)`` forward, identity backward."""
    return v + (torch.round(v) - v).detach()


def grad_scale(s: torch.Tensor, g: float) -> torch.Tensor:
    """``s`` forward, gradient multiplied by ``g`` backward."""
    return s * g + (s - s * g).detach()


def cast_ste(s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``s`` rounded to ``dtype`` forward (as it will be stored), identity backward."""
    return s + (s.to(dtype).to(s.dtype) - s).detach()


def lsq_grad_factor(values_per_step: int, qmax: int) -> float:
    """LSQ's ``g = 1 / sqrt(N * Qp)``."""
    return 1.0 / math.sqrt(max(values_per_step, 1) * max(qmax, 1))


def lsq_fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    block_size: tuple[int, ...],
    g: float,
) -> torch.Tensor:
    """Quantize-dequantize ``x`` per block with learnable ``scale`` (zero points stay fixed)."""
    s = expand_params(grad_scale(scale, g), block_size)
    z = expand_params(zero_point.to(x.dtype), block_size)
    v = block_view(x, block_size)
    # round(v/s) + z, in the integer kernels' order (ties round to even before the shift)
    q = torch.clamp(round_ste(v / s) + z, qmin, qmax)
    return ((q - z) * s).reshape(x.shape)


def pact_fake_quantize(x: torch.Tensor, step: torch.Tensor, levels: int) -> torch.Tensor:
    """PACT (Choi et al. 2018) for non-negative inputs: clip to ``[0, α]``, ``α = step * levels``.

    ``y = min(relu(x), α)`` quantized on ``levels`` steps of ``α / levels``. Gradients as in the
    paper: ``∂/∂x = 1`` on ``[0, α]``, ``∂/∂α = 1`` where ``x >= α`` (rounding straight through,
    so the step receives ``levels`` times PACT's clipping gradient).
    """
    alpha = step * levels
    y = torch.minimum(torch.relu(x), alpha)
    s = step.detach()
    return y + (torch.round(y / s) * s - y).detach()
