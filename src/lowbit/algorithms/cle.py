"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", §4.1).

For two layers ``y = f(W1 x + b1)``, ``z = W2 y + b2`` with a positively homogeneous ``f``
(ReLU, leaky ReLU, identity, max-pooling), scaling channel ``i`` of the first layer's output by
``1/s_i`` and the matching input channel of the second by ``s_i`` leaves ``z`` unchanged:

    W1' = S⁻¹ W1,  b1' = S⁻¹ b1,  W2' = W2 S,   S = diag(s)

With ``r1_i`` the range of output channel ``i`` of ``W1`` and ``r2_i`` the range of input
channel ``i`` of ``W2``, the choice ``s_i = √(r1_i · r2_i) / r2_i`` makes both ranges equal to
``√(r1_i · r2_i)`` (the paper's optimum for per-tensor quantization of both layers).

>>> r1, r2 = torch.tensor([4.0, 1.0]), torch.tensor([1.0, 4.0])
>>> s = equalization_scales(r1, r2)
>>> (r1 / s).tolist(), (r2 * s).tolist()
([2.0, 2.0], [2.0, 2.0])
"""

from __future__ import annotations

import torch

__all__ = ["equalization_scales"]


def equalization_scales(r1: torch.Tensor, r2: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``s = √(r1·r2) / r2`` per channel; channels where either range is zero keep ``s = 1``
    (a dead channel carries nothing to equalize, and dividing by it would blow up)."""
    r1, r2 = r1.double(), r2.double()
    live = (r1 > eps) & (r2 > eps)
    s = torch.where(live, torch.sqrt(r1 * r2) / r2.clamp(min=eps), torch.ones_like(r1))
    return s.float()
