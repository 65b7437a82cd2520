"""AdaRound math core: rectified sigmoid, annealing, and learned rounding beating nearest."""

import pytest
import torch

from lowbit.algorithms.adaround import (
    adaround,
    beta_schedule,
    rectified_sigmoid,
    rounding_regularizer,
)


def test_rectified_sigmoid_reaches_zero_and_one():
    h = rectified_sigmoid(torch.tensor([-10.0, 0.0, 10.0]))
    assert h.tolist()[0] == 0.0 and h.tolist()[2] == 1.0 and h.tolist()[1] == pytest.approx(0.5)


def test_regularizer_is_zero_only_at_binary_values():
    assert float(rounding_regularizer(torch.tensor([-10.0, 10.0]), beta=2)) == 0.0
    assert float(rounding_regularizer(torch.tensor([0.0]), beta=2)) == pytest.approx(1.0)


def test_beta_warms_up_then_anneals_from_20_to_2():
    assert beta_schedule(0, 100) is None
    assert beta_schedule(20, 100) == pytest.approx(20)
    assert beta_schedule(99, 100) == pytest.approx(2, abs=0.1)


@pytest.mark.parametrize("q", [7, 3, 1])  # 4-, 3- and 2-bit symmetric grids
def test_adaround_reconstructs_better_than_nearest(q):
    torch.manual_seed(0)
    w, x = torch.randn(16, 32), torch.randn(512, 32) @ torch.randn(32, 32)
    s = w.abs().amax(1, keepdim=True) / q
    up = adaround(w, s, torch.zeros_like(s), -q - 1, q, lambda x_, w_: x_ @ w_.T, x, x, iters=500)
    err = lambda codes: float(((x @ (w - codes * s).T) ** 2).sum())  # noqa: E731
    assert set(up.unique().tolist()) <= {0.0, 1.0}
    assert err(torch.floor(w / s) + up) < 0.9 * err(torch.round(w / s))


def test_adaround_never_returns_worse_than_nearest():
    # uncorrelated inputs: nearest is already optimal in expectation; learning must not hurt
    torch.manual_seed(1)
    w, x = torch.randn(4, 8), torch.randn(64, 8)
    s = w.abs().amax(1, keepdim=True) / 7
    up = adaround(w, s, torch.zeros_like(s), -8, 7, lambda x_, w_: x_ @ w_.T, x, x, iters=50)
    err = lambda codes: float(((x @ (w - codes * s).T) ** 2).sum())  # noqa: E731
    assert err(torch.floor(w / s) + up) <= err(torch.round(w / s)) + 1e-6
