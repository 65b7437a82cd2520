"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization").

Rounding to nearest is not optimal for the task loss; AdaRound learns, per weight, whether to
round down or up by minimising the layer's output reconstruction error. With ``V`` continuous:

    W̃ = s · (clip(⌊W/s⌋ + h(V) + z, n, p) − z)
    h(V) = clip(σ(V)(ζ − γ) + γ, 0, 1)                       (rectified sigmoid, ζ=1.1, γ=−0.1)
    min_V ‖f(W x) − f(W̃ x̃)‖²_F + λ Σ (1 − |2h(V) − 1|^β)      (eq. 21-25; f = identity here:
                                                              the layer output before its activation)

Here the reconstruction term is divided by the mean square of the float output and the
regularizer is averaged over the weights, so one ``λ`` (1.0) serves layers of any size and
output scale; with the paper's raw sums λ would need retuning per layer. The result is compared
with round-to-nearest on all the calibration inputs and the better one is returned, so a layer
is never made worse on the data it was fitted to.

``x`` is the layer's input in the float model and ``x̃`` the same input in the partly quantized
model, quantized like the layer will see it (the paper's asymmetric reconstruction, activation
quantization in the loop). ``β`` is annealed from 20 to 2 after a warm-up with no regularizer,
so ``h(V)`` first fits freely and is then pushed to exactly 0 or 1. ``V`` starts where
``h(V) = W/s − ⌊W/s⌋`` (so the first iterate equals the unrounded weight).

>>> _ = torch.manual_seed(0)
>>> w, x = torch.randn(4, 8), torch.randn(256, 8) @ torch.randn(8, 8)  # correlated inputs
>>> s = w.abs().amax(1, keepdim=True) / 7
>>> up = adaround(w, s, torch.zeros_like(s), -8, 7, lambda x_, w_: x_ @ w_.T, x, x, iters=200)
>>> rtn = torch.round(w / s)
>>> ada = torch.floor(w / s) + up
>>> bool(((x @ (w - ada * s).T) ** 2).sum() <= ((x @ (w - rtn * s).T) ** 2).sum())
True
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["adaround", "rectified_sigmoid", "rounding_regularizer", "beta_schedule"]

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(V) = clip(σ(V)(ζ − γ) + γ, 0, 1)``: reaches exactly 0 and 1 (a plain sigmoid never does)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def rounding_regularizer(v: torch.Tensor, beta: float) -> torch.Tensor:
    """``Σ 1 − |2h(V) − 1|^β``: zero only when every ``h`` is 0 or 1."""
    return (1 - (2 * rectified_sigmoid(v) - 1).abs().pow(beta)).sum()


def beta_schedule(step: int, iters: int, warmup: float = 0.2, start: float = 20, end: float = 2):
    """``β`` for ``step``: None during warm-up, then cosine-annealed from ``start`` to ``end``."""
    first = int(warmup * iters)
    if step < first:
        return None
    t = (step - first) / max(1, iters - first)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t))


def _initial_v(rest: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V) = rest`` (inverse of the rectified sigmoid, clamped away from ±inf)."""
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


def adaround(
    w: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    qmin: int,
    qmax: int,
    layer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_float: torch.Tensor,
    x_quant: torch.Tensor,
    *,
    iters: int = 1000,
    lam: float = 1.0,
    lr: float = 1e-2,
    batch_size: int = 256,
    warmup: float = 0.2,
    seed: int = 0,
) -> torch.Tensor:
    """Learn the rounding of ``w``; returns ``up ∈ {0, 1}`` with codes ``⌊w/s⌋ + up``.

    ``scale``/``zero`` broadcast against ``w``; ``layer(x, weight)`` computes the layer output
    (pre-activation) for a batch of inputs; ``x_float``/``x_quant`` are paired along dim 0.
    """
    w, scale, zero = w.detach().float(), scale.detach().float(), zero.detach().float()
    base = torch.floor(w / scale)
    v = _initial_v(w / scale - base).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = x_float.shape[0]
    with torch.no_grad():
        target_all = layer(x_float, w)
        norm = target_all.pow(2).mean().clamp(min=1e-12)  # relative error: λ means the same
    for step in range(iters):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        w_soft = scale * (torch.clamp(base + rectified_sigmoid(v) + zero, qmin, qmax) - zero)
        rec = (layer(x_quant[idx], w_soft) - target_all[idx]).pow(2).mean() / norm
        beta = beta_schedule(step, iters, warmup)
        loss = rec if beta is None else rec + lam * rounding_regularizer(v, beta) / v.numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    up = (v.detach() >= 0).float()  # h(V) ≥ 0.5 ⇔ V ≥ 0: round up
    nearest = (w / scale - base >= 0.5).float()
    with torch.no_grad():  # keep round-to-nearest where learning did not pay off on this data
        err = [
            float(
                (
                    layer(x_quant, scale * (torch.clamp(base + u + zero, qmin, qmax) - zero))
                    - target_all
                )
                .pow(2)
                .sum()
            )
            for u in (up, nearest)
        ]
    return up if err[0] <= err[1] else nearest
