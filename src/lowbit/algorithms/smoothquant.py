"""SmoothQuant (Xiao et al. 2022, "SmoothQuant: Accurate and Efficient Post-Training
Quantization for Large Language Models", §4.2).

Activations have a few channels with large outliers, weights do not; a per-channel scale moves
part of the difficulty from activations to weights, leaving ``Y = X W`` unchanged:

    Y = (X diag(s)⁻¹) (diag(s) W),     s_j = max|X_j|^α / max|W_j|^(1-α)

``α`` is the migration strength (0.5 in the paper for most models; larger moves more of the
outliers into the weights). Channels that never fire, or whose weights are all zero, keep
``s_j = 1``.

>>> s = smoothquant_scales(torch.tensor([16.0, 1.0]), torch.tensor([1.0, 1.0]), alpha=0.5)
>>> s.tolist()
[4.0, 1.0]
"""

from __future__ import annotations

import torch

__all__ = ["smoothquant_scales"]


def smoothquant_scales(
    act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float = 0.5, eps: float = 1e-5
) -> torch.Tensor:
    """``s_j = max|X_j|^α / max|W_j|^(1-α)`` per input channel ``j``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SmoothQuant's migration strength alpha must be in [0, 1], got {alpha}")
    a, w = act_absmax.double(), weight_absmax.double()
    live = (a > eps) & (w > eps)
    s = torch.where(live, a.clamp(min=eps) ** alpha / w.clamp(min=eps) ** (1 - alpha), 1.0)
    return s.float()
