"""The Inductor-fused element-wise kernels equal their eager definitions and the references."""

from __future__ import annotations

import pytest
import torch

from lowbit.kernels import cpu, fused


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(fused.FUSED_MIN_ROWS + 13, 96) * torch.linspace(0.1, 5, 96)


def test_fused_quantize_per_token_matches_eager_exactly(x):
    q_fused, s_fused = fused.fused(fused.quantize_per_token, x.shape[0])(x)
    q_eager, s_eager = fused.quantize_per_token(x)
    assert q_fused.dtype == torch.int8
    torch.testing.assert_close(s_fused, s_eager)
    # same ops, same rounding: codes may differ only where x / s sits on a rounding tie
    assert (q_fused.int() - q_eager.int()).abs().max() <= 1
    assert (q_fused != q_eager).float().mean() < 1e-3


def test_fused_quantize_static_matches_eager(x):
    scale, zp = torch.tensor(0.03), torch.tensor(-5.0)
    got = fused.fused(fused.quantize_static, x.shape[0])(x, scale, zp, -128, 127)
    want = fused.quantize_static(x, scale, zp, -128, 127)
    assert got.dtype == torch.int8
    assert (got.int() - want.int()).abs().max() <= 1


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
