"""Affine primitives: property tests of quantize/dequantize/fake_quantize for 2..8-bit grids.

Convention under test: ``x ≈ (q - zero_point) * scale`` with
``q = clamp(round(x / scale) + zero_point, qmin, qmax)``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import ConfigError
from lowbit.formats import IntFormat
from lowbit.granularity import Granularity
from lowbit.primitives import (
    block_minmax,
    block_view,
    choose_qparams,
    dequantize,
    expand_params,
    fake_quantize,
    quantize,
)

SETTINGS = settings(max_examples=60, deadline=None)
REL_EPS = 1e-5  # float32 rounding of x / scale near a half-way point


@st.composite
def cases(draw):
    """A random float tensor, a granularity that tiles it, and an integer format."""
    kind = draw(st.sampled_from(["per_tensor", "per_channel", "per_group"]))
    rows = draw(st.integers(1, 5))
    if kind == "per_group":
        group = draw(st.integers(1, 6))
        cols = group * draw(st.integers(1, 4))
        text = f"per_group:{group}"
    else:
        cols = draw(st.integers(1, 12))
        text = kind
    magnitude = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    values = draw(
        st.lists(
            st.floats(-1.0, 1.0, allow_nan=False, width=32),
            min_size=rows * cols,
            max_size=rows * cols,
        )
    )
    x = torch.tensor(values, dtype=torch.float32).reshape(rows, cols) * magnitude
    block = Granularity.parse(text).block_size(x.shape)
    fmt = IntFormat(draw(st.integers(2, 8)), draw(st.booleans()))
    return x, block, fmt, draw(st.booleans())


def _qparams(x, block, fmt, symmetric):
    lo, hi = block_minmax(x, block)
    return choose_qparams(lo, hi, fmt, symmetric)


def _expand(p: torch.Tensor, x: torch.Tensor, block) -> torch.Tensor:
    """A per-block parameter broadcast to ``x``'s shape (one value per element)."""
    full = expand_params(p, block).expand(block_view(x, block).shape)
    return full.reshape(x.shape)


@SETTINGS
@given(cases())
def test_round_trip_error_is_at_most_half_a_step(case) -> None:
    x, block, fmt, symmetric = case
    scale, zp = _qparams(x, block, fmt, symmetric)
    xr = dequantize(quantize(x, scale, zp, fmt, block), scale, zp, block)
    step = _expand(scale, x, block)
    err = (x - xr).abs()
    bound = step / 2 * (1 + REL_EPS) + REL_EPS * x.abs()
    assert bool((err <= bound).all()), f"max excess {(err - bound).max().item()}"


@SETTINGS
@given(cases())
def test_codes_stay_on_the_grid_and_use_the_storage_dtype(case) -> None:
    x, block, fmt, symmetric = case
    scale, zp = _qparams(x, block, fmt, symmetric)
    q = quantize(x * 3.0, scale, zp, fmt, block)  # x * 3 also exercises clamping
    assert q.dtype == fmt.storage_dtype
    assert q.shape == x.shape
    assert int(q.min()) >= fmt.qmin and int(q.max()) <= fmt.qmax
    assert scale.shape == zp.shape
    assert scale.shape == tuple(s // b for s, b in zip(x.shape, block, strict=True))
    assert zp.dtype == torch.int32
    assert bool((scale > 0).all())
    assert bool(((zp >= fmt.qmin) & (zp <= fmt.qmax)).all())


@SETTINGS
@given(cases())
def test_zero_is_exactly_representable(case) -> None:
    x, block, fmt, symmetric = case
    scale, zp = _qparams(x, block, fmt, symmetric)
    zeros = torch.zeros_like(x)
    assert torch.equal(dequantize(quantize(zeros, scale, zp, fmt, block), scale, zp, block), zeros)
    # and every exact zero inside x survives the round trip
    x0 = x.clone()
    x0[:, ::2] = 0.0
    xr = dequantize(quantize(x0, scale, zp, fmt, block), scale, zp, block)
    assert bool((xr[:, ::2] == 0).all())


@SETTINGS
@given(cases())
def test_values_outside_the_range_clamp_to_the_grid_ends(case) -> None:
    x, block, fmt, symmetric = case
    scale, zp = _qparams(x, block, fmt, symmetric)
    big = torch.full_like(x, 1e9)
    assert bool((quantize(big, scale, zp, fmt, block) == fmt.qmax).all())
    assert bool((quantize(-big, scale, zp, fmt, block) == fmt.qmin).all())


@SETTINGS
@given(cases())
def test_fake_quantize_forward_equals_dequantize_of_quantize(case) -> None:
    x, block, fmt, symmetric = case
    scale, zp = _qparams(x, block, fmt, symmetric)
    expected = dequantize(quantize(x, scale, zp, fmt, block), scale, zp, block)
    got = fake_quantize(x, scale, zp, fmt, block)
    assert got.shape == x.shape and got.dtype == x.dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=float(scale.max()) * 1e-6)


@SETTINGS
@given(cases(), st.floats(0.2, 0.9))
def test_fake_quantize_gradient_is_straight_through_inside_and_zero_outside(case, shrink) -> None:
    x, block, fmt, symmetric = case
    lo, hi = block_minmax(x, block)
    scale, zp = choose_qparams(lo * shrink, hi * shrink, fmt, symmetric)  # clips the tails
    xg = x.clone().requires_grad_(True)
    weights = torch.arange(1, x.numel() + 1, dtype=torch.float32).reshape(x.shape)
    (fake_quantize(xg, scale, zp, fmt, block) * weights).sum().backward()
    unclamped = torch.round(x / _expand(scale, x, block)) + _expand(zp, x, block)
    inside = (unclamped >= fmt.qmin) & (unclamped <= fmt.qmax)
    assert torch.equal(xg.grad, torch.where(inside, weights, torch.zeros_like(weights)))


def test_gradient_has_both_regions_on_a_known_example() -> None:
    fmt = IntFormat(4, True)  # grid [-8, 7]
    x = torch.tensor([[-3.0, -0.5, 0.0, 0.5, 3.0]], requires_grad=True)
    scale, zp = torch.tensor([[0.25]]), torch.tensor([[0]], dtype=torch.int32)
    out = fake_quantize(x, scale, zp, fmt, (1, 5))
    out.sum().backward()
    assert torch.equal(out.detach(), torch.tensor([[-2.0, -0.5, 0.0, 0.5, 1.75]]))
    assert torch.equal(x.grad, torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]]))


@pytest.mark.parametrize(
    ("fmt", "symmetric", "zp"),
    [
        (IntFormat(8, True), True, 0),
        (IntFormat(8, False), True, 128),
        (IntFormat(4, False), True, 8),
        (IntFormat(2, True), True, 0),
    ],
)
def test_symmetric_zero_point_is_the_grid_centre(fmt, symmetric, zp) -> None:
    scale, z = choose_qparams(torch.tensor([-2.0]), torch.tensor([1.0]), fmt, symmetric)
    assert int(z) == zp
    half = min(fmt.qmax - zp, zp - fmt.qmin)
    assert float(scale) == pytest.approx(2.0 / half)


def test_int8_symmetric_scale_is_amax_over_127() -> None:
    x = torch.tensor([[-1.0, 0.5], [2.0, 4.0]])
    scale, zp = _qparams(x, (1, 2), IntFormat(8, True), True)
    torch.testing.assert_close(scale, torch.tensor([[1.0 / 127], [4.0 / 127]]))
    assert torch.equal(zp, torch.zeros(2, 1, dtype=torch.int32))


def test_asymmetric_range_is_widened_to_include_zero() -> None:
    fmt = IntFormat(8, False)
    scale, zp = choose_qparams(torch.tensor(2.0), torch.tensor(6.0), fmt, symmetric=False)
    assert int(zp) == 0  # min widened to 0
    assert float(scale) == pytest.approx(6.0 / 255)


def test_constant_zero_block_gets_a_positive_scale() -> None:
    scale, zp = _qparams(torch.zeros(2, 4), (1, 4), IntFormat(8, True), True)
    assert bool((scale > 0).all()) and bool(torch.isfinite(scale).all())


def test_four_dimensional_per_channel_weight() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3)
    block = Granularity.parse("per_channel").block_size(w.shape)
    fmt = IntFormat(8, True)
    scale, zp = _qparams(w, block, fmt, True)
    assert scale.shape == (6, 1, 1, 1)
    err = (dequantize(quantize(w, scale, zp, fmt, block), scale, zp, block) - w).abs()
    assert bool((err <= _expand(scale, w, block) / 2 * (1 + REL_EPS)).all())


def test_dequantize_dtype() -> None:
    fmt = IntFormat(8, True)
    x = torch.randn(2, 4)
    scale, zp = _qparams(x, (2, 4), fmt, True)
    q = quantize(x, scale, zp, fmt, (2, 4))
    assert dequantize(q, scale, zp, (2, 4), dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("block", [(3, 4), (2,), (2, 3, 1), (0, 4)])
def test_block_size_that_does_not_tile_raises(block) -> None:
    with pytest.raises(ConfigError):
        block_view(torch.zeros(4, 4), block)
