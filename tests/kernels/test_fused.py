"""The Inductor-fused element-wise kernels equal their eager definitions and the references."""

from __future__ import annotations

import pytest
import torch

from lowbit.kernels import cpu, fused


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(fused.FUSED_MIN_ROWS + 13, 96) * torch.linspace(0.1, 5, 96)


@pytest.fixture(scope="module")
def ties() -> torch.Tensor:
    """Values at (k + 1/2) * 0.03: x / 0.03 sits on rounding ties, where a compiler that
    rewrote x / s as x * (1 / s) would round differently (a quarter of them, by one code)."""
    torch.manual_seed(0)
    return (torch.randint(-200, 200, (fused.FUSED_MIN_ROWS + 13, 96)).float() + 0.5) * 0.03


def _compiled(fn, rows: int):
    """``fn``'s compiled twin, or a skip where this machine has none to compare."""
    twin = fused.fused(fn, rows)
    if twin is fn:
        _skip_if_broken(fn)
        pytest.skip("fusion is off (LOWBIT_FUSED=0): no compiled kernel to compare")
    return twin


def _skip_if_broken(fn) -> None:
    if fn.__name__ in fused._broken:  # compilation failed: _guarded warned and ran fn itself
        pytest.skip(f"{fn.__name__} did not compile here (no C++ compiler?): nothing to compare")


def _run(twin, fn, *args):
    out = twin(*args)
    _skip_if_broken(fn)
    return out


@pytest.mark.parametrize("data", ["x", "ties"])
def test_fused_quantize_per_token_matches_eager_exactly(data, request):
    x = request.getfixturevalue(data)
    fn = fused.quantize_per_token
    q_fused, s_fused = _run(_compiled(fn, x.shape[0]), fn, x)
    q_eager, s_eager = fn(x)
    assert q_fused.dtype == torch.int8
    # same ops, same rounding, ties included: bit for bit
    assert torch.equal(s_fused, s_eager) and torch.equal(q_fused, q_eager)


@pytest.mark.parametrize("data", ["x", "ties"])
def test_fused_quantize_static_matches_eager_exactly(data, request):
    x = request.getfixturevalue(data)
    fn = fused.quantize_static
    scale, zp = torch.tensor(0.03), torch.tensor(-5.0)
    got = _run(_compiled(fn, x.shape[0]), fn, x, scale, zp, -128, 127)
    want = fn(x, scale, zp, -128, 127)
    assert got.dtype == torch.int8
    assert torch.equal(got, want)


def test_tie_inputs_tell_division_from_multiplication_by_the_reciprocal(ties):
    """The exact comparison above sees an x * (1 / s) rewrite: on ``ties`` it moves codes."""
    scale, zp = torch.tensor(0.03), torch.tensor(-5.0)
    want = fused.quantize_static(ties, scale, zp, -128, 127)
    rewritten = torch.clamp(torch.round(ties * (1 / scale)) + zp, -128, 127).to(torch.int8)
    assert int((want != rewritten).sum()) > 100


@pytest.mark.parametrize("with_bias", [True, False])
def test_dequantize_accumulator_fused_and_small_paths_agree(with_bias):
    torch.manual_seed(1)
    for rows in (3, fused.FUSED_MIN_ROWS + 1):
        acc = torch.randint(-50_000, 50_000, (rows, 40), dtype=torch.int32)
        row, col = torch.rand(rows, 1), torch.rand(40)
        bias = torch.randn(40) if with_bias else None
        want = acc.double() * row.double() * col.double()
        if bias is not None:
            want = want + bias.double()
        got = cpu.dequantize_accumulator(acc.clone(), row, col, bias)
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-3)


def test_quantize_dynamic_int8_bounds_on_both_paths(x):
    for rows in (5, x.shape[0]):
        q, s = cpu.quantize_dynamic_int8(x[:rows])
        assert q.dtype == torch.int8 and s.shape == (rows, 1)
        assert int(q.abs().max()) <= 127
        err = (q.float() * s - x[:rows]).abs()
        assert bool((err <= s / 2 + 1e-6).all())


def test_disabled_fusion_returns_the_eager_function(monkeypatch):
    monkeypatch.setattr(fused, "FUSED_MIN_ROWS", 10**9)
    assert fused.fused(fused.quantize_per_token, 1000) is fused.quantize_per_token
