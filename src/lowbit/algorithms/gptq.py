"""GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers"): quantize a weight column by column and let the remaining columns
absorb each column's error, weighted by the inverse Hessian of the layer's reconstruction loss.

For ``W ∈ R^{r×c}`` and calibration inputs ``X ∈ R^{n×c}``, minimise ``‖XWᵀ - XQᵀ‖²`` with
``H = 2XᵀX``. With ``U = chol(H⁻¹)ᵀ`` (upper), column ``j`` is quantized to ``q_j`` and

    e = (w_j - q_j) / U_jj,      W_{:, j+1:} -= e · U_{j, j+1:}

applied lazily per block of ``block_size`` columns (the paper's "lazy batch updates"). Options
from the paper and its reference code: dampening ``λ = percdamp · mean(diag H)``, dead inputs
(``H_jj = 0``) zeroed, ``act_order`` (columns by decreasing ``H_jj``), and group-wise
parameters: ``fit`` is called on each group's columns as quantization reaches it (with
``act_order`` the groups are fixed up front from the original weight: "static groups").

The quantizer is two callables, so any grid works: ``fit(W_cols, g) -> params`` for group ``g``
(a fixed grid such as a k-means codebook can ignore ``W_cols``) and
``qdq(w_col, params) -> q_col`` (quantize-dequantize one column of ``r`` values).

>>> _ = torch.manual_seed(0)
>>> x, w = torch.randn(256, 32) @ torch.randn(32, 32), torch.randn(8, 32)
>>> fit = lambda cols, g: cols.abs().amax(dim=1).clamp(min=1e-8) / 7
>>> qdq = lambda col, s: torch.clamp(torch.round(col / s), -8, 7) * s
>>> q, _ = gptq(w, 2 * x.T @ x, fit, qdq)
>>> bool(((x @ (w - q).T) ** 2).sum() < ((x @ (w - qdq(w.T, fit(w, 0)).T).T) ** 2).sum())
True
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["gptq"]


def _inverse_hessian_cholesky(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹`` (the rows GPTQ propagates errors with)."""
    damp = percdamp * torch.mean(torch.diag(h))
    h = h + damp * torch.eye(h.shape[0], dtype=h.dtype)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def gptq(
    w: torch.Tensor,
    h: torch.Tensor,
    fit: Callable[[torch.Tensor, int], object],
    qdq: Callable[[torch.Tensor, object], torch.Tensor],
    *,
    group_size: int | None = None,
    block_size: int = 128,
    percdamp: float = 0.01,
    act_order: bool = False,
) -> tuple[torch.Tensor, list[object]]:
    """Returns ``(Q, params)``: the quantized weight and the parameters of each group in
    column order (one entry when ``group_size`` is None)."""
    w = w.detach().double().clone()
    h = h.detach().double().clone()
    rows, cols = w.shape
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    size = group_size or cols
    groups = [fit(w[:, g : g + size].float(), g // size) for g in range(0, cols, size)]
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(cols)
    w, h = w[:, perm], h[perm][:, perm]
    u = _inverse_hessian_cholesky(h, percdamp)
    q = torch.zeros_like(w)
    for b1 in range(0, cols, block_size):
        b2 = min(b1 + block_size, cols)
        w1, err1 = w[:, b1:b2].clone(), torch.zeros(rows, b2 - b1, dtype=w.dtype)
        for i in range(b2 - b1):
            j = int(perm[b1 + i])  # the original column: its group
            if group_size and not act_order and j % size == 0:
                groups[j // size] = fit(w1[:, i : i + size].float(), j // size)  # updated W
            col = w1[:, i]
            qc = qdq(col.float(), groups[j // size]).double()
            q[:, b1 + i] = qc
            e = (col - qc) / u[b1 + i, b1 + i]
            w1[:, i:] -= e[:, None] * u[b1 + i, b1 + i : b2][None, :]
            err1[:, i] = e
        w[:, b2:] -= err1 @ u[b1:b2, b2:]
    q = q[:, torch.argsort(perm)]
    return q.float(), groups
