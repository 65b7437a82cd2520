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

The best α differs between models (the paper uses 0.5 for OPT/BLOOM and 0.75-0.85 for GLM and
Llama). ``smoothquant_search`` picks it per layer on calibration rows: the α whose quantized
output ``Q_x(X diag(s)⁻¹) Q_w(diag(s) W)`` is closest to ``X W``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["smoothquant_scales", "smoothquant_search"]


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


def smoothquant_search(
    w: torch.Tensor,
    x: torch.Tensor,
    qdq_w: Callable[[torch.Tensor], torch.Tensor],
    qdq_x: Callable[[torch.Tensor], torch.Tensor],
    alphas: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    act_absmax: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float | None, dict]:
    """``(s, α*, {α: loss})`` minimising ``‖X Wᵀ − Q_x(X/s) Q_w(W s)ᵀ‖²`` over ``alphas``.

    ``w`` is ``[out, in]``, ``x`` is ``[rows, in]``; ``act_absmax`` (default: from ``x``) is
    ``max|X_j|`` over all calibration data. The loss without smoothing is under key ``None``;
    when it is the lowest, ``s = 1`` and ``α* = None`` are returned.
    """
    w, x = w.float(), x.float()
    ref = x @ w.T
    a_max = x.abs().amax(dim=0) if act_absmax is None else act_absmax.float()
    w_max = w.abs().amax(dim=0)
    losses: dict = {None: float((ref - qdq_x(x) @ qdq_w(w).T).pow(2).mean())}
    best = (losses[None], None, torch.ones_like(a_max))
    for alpha in alphas:
        s = smoothquant_scales(a_max, w_max, alpha)
        loss = float((ref - qdq_x(x / s) @ qdq_w(w * s).T).pow(2).mean())
        losses[alpha] = loss
        if loss < best[0]:
            best = (loss, alpha, s)
    return best[2], best[1], losses
