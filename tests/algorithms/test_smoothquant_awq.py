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


def test_smoothquant_search_picks_an_alpha_that_beats_no_smoothing_on_outliers():
    from lowbit.algorithms.smoothquant import smoothquant_search

    torch.manual_seed(0)
    x = torch.randn(512, 32) * torch.where(torch.arange(32) < 2, 50.0, 1.0)  # outlier channels
    w = torch.randn(16, 32)

    def qdq(t, axis):  # int8 absmax, per row of w (axis 1) or per tensor for x (axis None)
        s = (t.abs().amax(1, keepdim=True) if axis else t.abs().max()) / 127
        return torch.round(t / s) * s

    s, alpha, losses = smoothquant_search(w, x, lambda t: qdq(t, 1), lambda t: qdq(t, None))
    assert alpha is not None and losses[alpha] == min(losses.values())
    assert losses[alpha] < 0.5 * losses[None]
    assert float(s[:2].min()) > float(s[2:].max())  # outlier channels are scaled down the most
