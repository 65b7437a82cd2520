"""MinMaxObserver / MovingAverageMinMaxObserver: exact extremes, EMA formula, shapes, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import CalibrationError, ConfigError
from lowbit.observers import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    make_observer,
)

ALL_OBSERVERS = [MinMaxObserver, MovingAverageMinMaxObserver, HistogramObserver]


def test_minmax_is_exact_over_batches() -> None:
    torch.manual_seed(0)
    batches = [torch.randn(4, 16) * (i + 1) for i in range(5)]
    obs = MinMaxObserver()
    for b in batches:
        obs.update(b)
    lo, hi = obs.minmax()
    allx = torch.cat([b.flatten() for b in batches])
    assert obs.num_batches == 5
    assert lo.shape == () and hi.shape == () and lo.dtype == torch.float32
    assert lo == allx.min() and hi == allx.max()


@pytest.mark.parametrize("axis", [1, -1])
def test_per_channel_shape_is_stable_across_batch_sizes(axis: int) -> None:
    torch.manual_seed(1)
    batches = [torch.randn(b, 3, 6) for b in (2, 5, 1)]
    obs = MinMaxObserver(f"per_channel:{axis}")
    for b in batches:
        obs.update(b)
    lo, hi = obs.minmax()
    allx = torch.cat(batches)
    dims = tuple(d for d in range(3) if d != axis % 3)
    assert lo.shape == (allx.shape[axis],)
    torch.testing.assert_close(lo, allx.amin(dim=dims))
    torch.testing.assert_close(hi, allx.amax(dim=dims))


def test_per_channel_rejects_changing_channel_count() -> None:
    obs = MinMaxObserver("per_channel:1")
    obs.update(torch.randn(2, 4))
    with pytest.raises(CalibrationError, match="channel axis 1 has 5 entries"):
        obs.update(torch.randn(2, 5))


def test_per_channel_rejects_missing_axis() -> None:
    with pytest.raises(CalibrationError, match="axis 2 does not exist"):
        MinMaxObserver("per_channel:2").update(torch.randn(3, 4))


def test_moving_average_formula() -> None:
    m = 0.25
    obs = MovingAverageMinMaxObserver(momentum=m)
    batches = [torch.tensor([-1.0, 2.0]), torch.tensor([-3.0, 1.0]), torch.tensor([0.0, 5.0])]
    exp_lo, exp_hi = -1.0, 2.0
    obs.update(batches[0])
    for b in batches[1:]:
        obs.update(b)
        exp_lo = (1 - m) * exp_lo + m * b.min().item()
        exp_hi = (1 - m) * exp_hi + m * b.max().item()
    lo, hi = obs.minmax()
    assert lo.item() == pytest.approx(exp_lo) and hi.item() == pytest.approx(exp_hi)


def test_moving_average_per_channel_shape() -> None:
    obs = MovingAverageMinMaxObserver(0.5, "per_channel")
    obs.update(torch.randn(4, 3))
    obs.update(torch.randn(4, 7))
    assert obs.minmax()[0].shape == (4,)


@pytest.mark.parametrize("momentum", [0.0, -0.1, 1.5])
def test_moving_average_rejects_bad_momentum(momentum: float) -> None:
    with pytest.raises(ConfigError, match="momentum"):
        MovingAverageMinMaxObserver(momentum)


@pytest.mark.parametrize("gran", ["per_token", "per_group:4"])
def test_dynamic_granularities_are_rejected(gran: str) -> None:
    with pytest.raises(ConfigError, match="per_tensor and per_channel"):
        MinMaxObserver(gran)


def test_observer_keeps_no_reference_to_input() -> None:
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    obs = MinMaxObserver()
    obs.update(x * 1)
    lo, hi = obs.minmax()
    assert not lo.requires_grad and not hi.requires_grad
    y = torch.tensor([1.0, -2.0, 3.0])
    obs2 = MinMaxObserver()
    obs2.update(y)
    y.mul_(100)  # mutating the caller's tensor must not move the statistics
    assert obs2.minmax()[1].item() == 3.0


def test_integer_input_is_accepted() -> None:
    obs = MinMaxObserver()
    obs.update(torch.tensor([3, -7, 2]))
    assert obs.minmax() == (torch.tensor(-7.0), torch.tensor(3.0))


@pytest.mark.parametrize("cls", ALL_OBSERVERS)
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.tensor([1.0, float("nan")]), "1 NaN and 0 Inf"),
        (torch.tensor([float("inf"), 0.0, -float("inf")]), "0 NaN and 2 Inf"),
        (torch.empty(0, 4), "empty tensor"),
        ([1.0, 2.0], "expects a torch.Tensor"),
    ],
)
def test_bad_batches_raise(cls: type, bad: object, message: str) -> None:
    obs = cls()
    with pytest.raises(CalibrationError, match=message):
        obs.update(bad)
    assert obs.num_batches == 0


@pytest.mark.parametrize("cls", ALL_OBSERVERS)
def test_no_data_raises(cls: type) -> None:
    with pytest.raises(CalibrationError, match="observer has seen no data"):
        cls().minmax()


def test_make_observer_types() -> None:
    assert type(make_observer("minmax", "per_channel")) is MinMaxObserver
    ma = make_observer("moving_average", momentum=0.3)
    assert type(ma) is MovingAverageMinMaxObserver and ma.momentum == 0.3


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=20), min_size=1, max_size=6
    )
)
def test_property_minmax_equals_global_extremes(batches: list[list[float]]) -> None:
    obs = MinMaxObserver()
    for b in batches:
        obs.update(torch.tensor(b))
    flat = [v for b in batches for v in b]
    lo, hi = obs.minmax()
    assert lo.item() == min(flat) and hi.item() == max(flat)
