"""Range solvers: percentile vs analytic quantiles, MSE beats minmax on heavy tails, entropy clips
outliers, dispatch and errors."""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import CalibrationError, ConfigError
from lowbit.formats import get_format
from lowbit.observers import HistogramObserver, MinMaxObserver, RangeMethod, solve_range
from lowbit.primitives import choose_qparams, dequantize, quantize
from lowbit.ranges import entropy_range, finalize_range, mse_range, percentile_range

Z99 = 2.5758  # standard normal quantile at 0.995
Z999 = 3.2905  # at 0.9995


def _observe(x: torch.Tensor, bins: int = 2048) -> HistogramObserver:
    obs = HistogramObserver(bins)
    obs.update(x)
    return obs


@pytest.fixture(scope="module")
def gaussian() -> torch.Tensor:
    return torch.randn(200_000, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def heavy_tailed() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    laplace = -torch.log(torch.rand(100_000, generator=g)) * torch.sign(
        torch.rand(100_000, generator=g) - 0.5
    )
    return torch.cat([laplace, torch.tensor([40.0, -30.0, 60.0])])


def _quant_mse(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, fmt_name: str, sym: bool):
    fmt = get_format(fmt_name)
    scale, zp = choose_qparams(lo, hi, fmt, sym)
    xq = dequantize(quantize(x, scale, zp, fmt, x.shape), scale, zp, x.shape)
    return (xq - x).pow(2).mean().item()


def test_range_method_parse() -> None:
    assert RangeMethod.parse(" Entropy ") is RangeMethod.ENTROPY
    assert RangeMethod.parse(RangeMethod.MSE) is RangeMethod.MSE
    with pytest.raises(ConfigError, match="unknown range method 'kl'.*minmax, moving_average"):
        RangeMethod.parse("kl")


@pytest.mark.parametrize(("p", "z"), [(99.0, Z99), (99.9, Z999)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_percentile_matches_gaussian_quantile(gaussian, p: float, z: float, symmetric) -> None:
    lo, hi = solve_range(_observe(gaussian), "percentile", "int8", symmetric, percentile=p)
    assert lo.shape == () and lo.dtype == torch.float32
    assert hi.item() == pytest.approx(z, abs=0.06) and lo.item() == pytest.approx(-z, abs=0.06)
    if symmetric:
        assert lo.item() == -hi.item()


def test_percentile_100_is_the_full_range(gaussian) -> None:
    lo, hi = solve_range(_observe(gaussian), "percentile", "int8", False, percentile=100.0)
    assert lo.item() == pytest.approx(gaussian.min().item(), abs=1e-5)
    assert hi.item() == pytest.approx(gaussian.max().item(), abs=1e-5)


@pytest.mark.parametrize("p", [0.0, -1.0, 100.5])
def test_percentile_rejects_bad_p(p: float) -> None:
    with pytest.raises(ConfigError, match="percentile must be in"):
        percentile_range(torch.ones(4), torch.arange(5.0), p, symmetric=True)


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(0, 1000), min_size=4, max_size=64).filter(lambda c: sum(c) > 0),
    p1=st.floats(1.0, 100.0),
    p2=st.floats(1.0, 100.0),
    symmetric=st.booleans(),
)
def test_property_percentile_range_is_monotone_in_p(counts, p1, p2, symmetric) -> None:
    p1, p2 = sorted((p1, p2))
    c = torch.tensor(counts, dtype=torch.float64)
    edges = torch.linspace(-1.0, 2.0, len(counts) + 1, dtype=torch.float64)
    lo1, hi1 = percentile_range(c, edges, p1, symmetric=symmetric)
    lo2, hi2 = percentile_range(c, edges, p2, symmetric=symmetric)
    assert lo2 <= lo1 + 1e-6 and hi1 <= hi2 + 1e-6
    assert -2.0 - 1e-6 <= lo2 <= hi2 <= 2.0 + 1e-6  # symmetric: within ±max|x|


@pytest.mark.parametrize("fmt_name", ["int8", "int4"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_beats_minmax_on_heavy_tails(heavy_tailed, fmt_name: str, symmetric: bool) -> None:
    obs = _observe(heavy_tailed)
    lo, hi = solve_range(obs, "mse", fmt_name, symmetric)
    mlo, mhi = solve_range(obs, "minmax", fmt_name, symmetric)
    assert (hi - lo) < (max(mhi, -mlo) * 2 if symmetric else mhi - mlo)
    assert _quant_mse(heavy_tailed, lo, hi, fmt_name, symmetric) < _quant_mse(
        heavy_tailed, mlo, mhi, fmt_name, symmetric
    )


def test_mse_keeps_most_of_a_uniform_range() -> None:
    x = torch.linspace(-1.0, 3.0, 50_000)
    lo, hi = solve_range(_observe(x), "mse", "int8", False)
    assert lo.item() <= -0.95 and hi.item() >= 2.85


def test_entropy_clips_huge_outliers(gaussian) -> None:
    x = torch.cat([gaussian, torch.tensor([50.0, -50.0, 45.0])])
    for symmetric in (True, False):
        lo, hi = solve_range(_observe(x), "entropy", "int8", symmetric)
        assert 2.5 < hi.item() < 0.25 * 50.0 and lo.item() < -2.5


def test_entropy_on_plain_gaussian_keeps_the_body(gaussian) -> None:
    lo, hi = solve_range(_observe(gaussian), "entropy", "int8", True)
    assert 3.0 < hi.item() <= gaussian.abs().max().item() and lo.item() == -hi.item()


def test_entropy_asymmetric_one_sided_data_keeps_the_minimum(gaussian) -> None:
    lo, hi = solve_range(_observe(gaussian.relu()), "entropy", "uint8", False)
    assert lo.item() == pytest.approx(0.0, abs=1e-6) and 0.5 < hi.item() <= gaussian.max()


def test_entropy_is_fast_for_2048_bins(gaussian) -> None:
    counts, edges = _observe(gaussian).histogram()
    start = time.perf_counter()
    entropy_range(counts, edges, get_format("int8"), symmetric=True)
    assert time.perf_counter() - start < 1.0


def test_entropy_needs_more_bins_than_levels() -> None:
    with pytest.raises(ConfigError, match="needs at least 32768 histogram bins"):
        entropy_range(torch.ones(2048), torch.linspace(-1, 1, 2049), get_format("int16"), True)


def test_solvers_reject_empty_or_malformed_histograms() -> None:
    with pytest.raises(CalibrationError, match="histogram is empty"):
        mse_range(torch.zeros(8), torch.arange(9.0), get_format("int8"), True)
    with pytest.raises(ConfigError, match="need an integer format"):
        entropy_range(torch.ones(8), torch.arange(9.0), get_format("bf16"), True)
    with pytest.raises(ConfigError, match="counts\\[n\\] and edges\\[n\\+1\\]"):
        percentile_range(torch.ones(8), torch.arange(8.0), symmetric=False)


def test_finalize_widens_degenerate_ranges_and_contains_the_pick() -> None:
    lo, hi = finalize_range(2.0, 2.0)
    assert lo < 2.0 < hi and (hi - lo).item() > 0
    lo, hi = finalize_range(0.1, 0.3)  # not float32-representable: rounding goes outwards
    assert lo.dtype == torch.float32 and lo.double() <= 0.1 and hi.double() >= 0.3
    with pytest.raises(CalibrationError, match="inverted"):
        finalize_range(1.0, 0.0)


def test_minmax_methods_pass_per_channel_shapes_through() -> None:
    obs = MinMaxObserver("per_channel")
    obs.update(torch.randn(6, 5))
    lo, hi = solve_range(obs, "moving_average", "int8", symmetric=False)
    assert lo.shape == (6,) and (lo < hi).all()


@pytest.mark.parametrize("method", ["percentile", "mse", "entropy"])
def test_histogram_methods_need_a_histogram_observer(method: str) -> None:
    obs = MinMaxObserver()
    obs.update(torch.randn(10))
    with pytest.raises(ConfigError, match=f"'{method}' needs a HistogramObserver.*MinMaxObserver"):
        solve_range(obs, method, "int8", symmetric=True)


def test_solve_range_errors() -> None:
    obs = HistogramObserver()
    with pytest.raises(CalibrationError, match="observer has seen no data"):
        solve_range(obs, "mse", "int8", symmetric=True)
    obs.update(torch.randn(10))
    with pytest.raises(ConfigError, match="unknown range method 'kld'"):
        solve_range(obs, "kld", "int8", symmetric=True)
    with pytest.raises(ConfigError, match="needs an integer format"):
        solve_range(obs, "minmax", "fp16", symmetric=True)
