"""CLE and bias correction math cores."""

import torch

from lowbit.algorithms.bias_correction import bias_correction
from lowbit.algorithms.cle import equalization_scales


def test_equalization_makes_ranges_equal_and_keeps_the_function():
    torch.manual_seed(0)
    w1 = torch.randn(16, 8) * torch.logspace(-2, 1, 16)[:, None]  # very uneven channels
    b1, w2 = torch.randn(16), torch.randn(4, 16)
    x = torch.randn(32, 8)
    s = equalization_scales(w1.abs().amax(1), w2.abs().amax(0))
    w1e, b1e, w2e = w1 / s[:, None], b1 / s, w2 * s
    assert torch.allclose(w1e.abs().amax(1), w2e.abs().amax(0), rtol=1e-4)
    y = torch.relu(x @ w1.T + b1) @ w2.T
    ye = torch.relu(x @ w1e.T + b1e) @ w2e.T
    assert torch.allclose(y, ye, atol=1e-4)


def test_dead_channels_keep_scale_one():
    s = equalization_scales(torch.tensor([0.0, 2.0]), torch.tensor([3.0, 0.0]))
    assert s.tolist() == [1.0, 1.0]


def test_bias_correction_removes_the_mean_shift():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    wq = w + 0.1 * torch.randn(8, 16)
    x = torch.randn(1000, 16) + 2.0  # inputs with a nonzero mean: the error has a mean too
    b = torch.zeros(8)
    b2 = bias_correction(b, (x @ w.T).mean(0), (x @ wq.T).mean(0))
    shift_before = ((x @ wq.T + b) - (x @ w.T)).mean(0).abs().max()
    shift_after = ((x @ wq.T + b2) - (x @ w.T)).mean(0).abs().max()
    assert shift_after < 1e-4 < shift_before
