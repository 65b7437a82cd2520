"""SmoothQuant scales and AWQ's grid search."""

import pytest
import torch

from lowbit.algorithms.awq import awq_scales, awq_search
from lowbit.algorithms.smoothquant import smoothquant_scales


def test_smoothquant_balances_activation_and_weight_ranges():
    a, w = torch.tensor([100.0, 1.0, 4.0]), torch.tensor([1.0, 1.0, 4.0])
    s = smoothquant_scales(a, w, alpha=0.5)
    assert torch.allclose(a / s, w * s)  # alpha = 0.5: equal ranges after migration


def test_smoothquant_rejects_alpha_out_of_range():
    with pytest.raises(ValueError, match="alpha"):
        smoothquant_scales(torch.ones(2), torch.ones(2), alpha=1.5)


def test_awq_scales_are_normalised():
    s = awq_scales(torch.tensor([0.1, 1.0, 10.0]), alpha=0.5)
    assert float(s.max() * s.min()) == pytest.approx(1.0, rel=1e-5)


def test_awq_search_never_loses_to_alpha_zero_and_helps_with_outlier_channels():
    torch.manual_seed(0)
    x = torch.randn(1024, 64) * torch.where(torch.arange(64) < 4, 20.0, 1.0)  # 4 outliers
    w = torch.randn(32, 64)

    def qdq(m):
        s = m.abs().amax(1, keepdim=True) / 7
        return torch.clamp(torch.round(m / s), -8, 7) * s

    s, alpha, losses = awq_search(w, x, qdq, n_grid=10)
    assert losses[alpha] == min(losses.values()) and alpha > 0
    assert losses[alpha] < 0.9 * losses[0.0]
    assert s.shape == (64,)
