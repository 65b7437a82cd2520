"""HistogramObserver: counts, range growth with re-binning, exact extremes, errors."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import CalibrationError, ConfigError
from lowbit.observers import HistogramObserver, make_observer
from lowbit.ranges import rebin_histogram


def test_small_histogram_is_exact() -> None:
    obs = HistogramObserver(bins=4)
    obs.update(torch.tensor([0.0, 1.0, 3.5, 4.0]))
    counts, edges = obs.histogram()
    assert counts.dtype == torch.float64 and counts.shape == (4,) and edges.shape == (5,)
    assert counts.tolist() == [1.0, 1.0, 0.0, 2.0]
    assert edges.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_total_count_survives_range_growth() -> None:
    torch.manual_seed(0)
    obs = HistogramObserver(bins=256)
    batches = [torch.randn(1000) * s + shift for s, shift in [(1, 0), (3, 2), (0.5, -9), (10, 0)]]
    for b in batches:
        obs.update(b)
    counts, edges = obs.histogram()
    allx = torch.cat(batches)
    assert counts.sum().item() == pytest.approx(allx.numel(), rel=1e-12)
    assert (counts >= 0).all()
    lo, hi = obs.minmax()
    assert lo == allx.min() and hi == allx.max()
    assert edges[0].item() == pytest.approx(lo.item()) and edges[-1].item() == pytest.approx(
        hi.item()
    )


def test_regrown_histogram_keeps_the_old_mass_where_it_was() -> None:
    torch.manual_seed(1)
    obs = HistogramObserver(bins=200)
    obs.update(torch.rand(5000))  # U[0, 1)
    obs.update(torch.rand(5000) - 4.0)  # U[-4, -3): range grows to the left
    counts, edges = obs.histogram()
    centres = (edges[:-1] + edges[1:]) / 2
    # re-binning spreads mass at most one (new) bin beyond its old support
    width = (edges[1] - edges[0]).item()
    assert counts[centres > -2].sum().item() == pytest.approx(5000, abs=1e-6)
    assert counts[(centres > -3 - width) & (centres < -3 + width)].sum() < 200
    assert counts[centres > 1 + width].sum() == 0


def test_rebin_is_proportional_and_mass_preserving() -> None:
    new = rebin_histogram(
        torch.tensor([4.0, 2.0], dtype=torch.float64),
        torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64),
        torch.tensor([-1.0, 0.5, 1.5, 3.0], dtype=torch.float64),
    )
    assert new.tolist() == [2.0, 3.0, 1.0]


def test_constant_data_gets_a_positive_width() -> None:
    obs = HistogramObserver(bins=16)
    obs.update(torch.full((10,), 3.0))
    counts, edges = obs.histogram()
    assert edges[-1] > edges[0] and counts.sum() == 10
    assert obs.minmax() == (torch.tensor(3.0), torch.tensor(3.0))


@pytest.mark.parametrize("gran", ["per_channel", "per_channel:1", "per_token"])
def test_histogram_is_per_tensor_only(gran: str) -> None:
    with pytest.raises(ConfigError, match="per-tensor only"):
        HistogramObserver(granularity=gran)
    with pytest.raises(ConfigError, match="per-tensor histogram"):
        make_observer("entropy", gran)


@pytest.mark.parametrize("bins", [0, 1, 2.5, True])
def test_bad_bins(bins: object) -> None:
    with pytest.raises(ConfigError, match="bins"):
        HistogramObserver(bins=bins)


def test_histogram_without_data_raises() -> None:
    with pytest.raises(CalibrationError, match="observer has seen no data"):
        HistogramObserver().histogram()


def test_make_observer_gives_histograms_for_distribution_methods() -> None:
    for method in ("percentile", "MSE", "entropy"):
        obs = make_observer(method, bins=512)
        assert isinstance(obs, HistogramObserver) and obs.bins == 512
