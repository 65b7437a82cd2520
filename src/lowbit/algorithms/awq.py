"""Activation-aware weight scaling (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization
for LLM Compression and Acceleration", §3.2).

Weights that meet large activations matter most. Scaling input channel ``j`` of ``W`` up by
``s_j`` (and the input down by ``s_j``) shrinks its relative rounding error; AWQ picks

    s = s_X^α / √(max(s_X^α) · min(s_X^α)),   s_X = mean|X| per input channel,

with ``α`` from a small grid search that minimises the layer's output error after quantization,

    α* = argmin_α ‖ X Wᵀ − (X diag(s)⁻¹) Q(W diag(s))ᵀ ‖²

(α = 0 is plain round-to-nearest, so the search is never worse than RTN on these inputs).

>>> _ = torch.manual_seed(0)
>>> x = torch.randn(512, 16) * torch.linspace(0.1, 10, 16)    # a few large input channels
>>> w = torch.randn(8, 16)
>>> qdq = lambda m: torch.round(m / (m.abs().amax(1, keepdim=True) / 7)) * (m.abs().amax(1, keepdim=True) / 7)
>>> s, alpha, losses = awq_search(w, x, qdq, n_grid=10)
>>> bool(losses[alpha] <= losses[0.0])
True
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["awq_search", "awq_scales"]


def awq_scales(x_absmean: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = s_X^α`` normalised so that ``max(s) · min(s) = 1`` (AWQ's reference code)."""
    s = x_absmean.double().clamp(min=1e-4) ** alpha
    s = s / torch.sqrt(s.max() * s.min())
    return s.float()


def awq_search(
    w: torch.Tensor,
    x: torch.Tensor,
    qdq: Callable[[torch.Tensor], torch.Tensor],
    n_grid: int = 20,
) -> tuple[torch.Tensor, float, dict[float, float]]:
    """Grid-search ``α ∈ {0, 1/n, ..., (n-1)/n}``; returns ``(s, α*, {α: loss})``.

    ``w`` is ``[out, in]``, ``x`` is ``[rows, in]`` (calibration inputs), ``qdq`` quantizes and
    dequantizes a whole weight matrix.
    """
    if n_grid < 1:
        raise ValueError(f"AWQ's grid needs at least one point, got n_grid={n_grid}")
    w, x = w.float(), x.float()
    ref = x @ w.T
    x_absmean = x.abs().mean(dim=0)
    losses: dict[float, float] = {}
    best = (float("inf"), 0.0, torch.ones_like(x_absmean))
    for k in range(n_grid):
        alpha = k / n_grid
        s = awq_scales(x_absmean, alpha)
        out = (x / s) @ qdq(w * s).T
        loss = float((ref - out).pow(2).mean())
        losses[alpha] = loss
        if loss < best[0]:
            best = (loss, alpha, s)
    return best[2], best[1], losses
