"""Weight quantizers for every format kind: uniform, grid (NF/pot/binary/ternary), codebook."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.config import TensorQuantSpec
from lowbit.errors import InvalidModelError
from lowbit.formats import get_format
from lowbit.measure import sqnr_db
from lowbit.weight_quant import dequantize_weight, quantize_weight

# (format, granularity, SQNR floor in dB) for randn(48, 128), seed 0: each floor sits 0.2-0.9 dB
# under the value measured (in the comment), below what a 10 % scale error or a wrong rounding
# gives (int4: 16.6 dB at 1.1x the scale; kmeans256: 20.0)
SPECS = [
    ("int4", "per_group:32", 19.8),  # 20.26
    ("uint3", "per_group:32", 14.8),  # 15.19
    ("int2", "per_channel", 1.9),  # 2.06; symmetric absmax int2: {-a, 0, a} mostly 0
    ("uint2", "per_group:64", 6.5),  # 6.76
    ("nf4", "per_group:32", 20.7),  # 21.10
    ("nf3", "per_channel", 13.0),  # 13.36
    ("pot4", "per_channel", 13.8),  # 14.22
    ("binary", "per_channel", 4.25),  # 4.38; sign * mean|w| on N(0, 1): 10 log10(pi / (pi - 2))
    ("ternary", "per_channel", 6.9),  # 7.17
    ("kmeans16", "per_tensor", 19.5),  # 19.77
    ("kmeans4", "per_channel", 9.2),  # 9.48
    ("kmeans256", "per_tensor", 44.0),  # 44.83
    ("kmeans16", "per_group:32", 21.5),  # 21.85
]


@pytest.mark.parametrize(("fmt", "gran", "floor"), SPECS)
def test_round_trip_sqnr_floor_and_codes_on_the_grid(fmt: str, gran: str, floor: float) -> None:
    torch.manual_seed(0)
    w = torch.randn(48, 128)
    symmetric = not fmt.startswith("uint")
    spec = TensorQuantSpec(fmt, gran, symmetric=symmetric)
    qw = quantize_weight(w, spec, "w")
    assert qw.qdata.shape == w.shape
    n_codes = 1 << get_format(fmt).bits
    assert int(qw.qdata.to(torch.int16).max()) < n_codes
    w_hat = dequantize_weight(qw, spec)
    assert sqnr_db(w, w_hat) > floor


def test_binary_is_sign_times_mean_abs_per_channel() -> None:
    w = torch.tensor([[0.5, -1.5, 1.0, -1.0], [2.0, 2.0, -2.0, 0.0]])
    spec = TensorQuantSpec("binary", "per_channel")
    w_hat = dequantize_weight(quantize_weight(w, spec, "w"), spec)
    expected = torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.5, 1.5, -1.5, 1.5]])
    assert torch.allclose(w_hat, expected)


def test_binary_floor_rejects_a_wrong_scale() -> None:
    """XNOR-Net's alpha = mean|w| gives 10 log10(pi / (pi - 2)) = 4.40 dB on Gaussian weights
    (4.38 measured); the floor fails sign(w) alone (scale 1, i.e. 1.25 alpha here: 3.88 dB),
    0.8 and 1.25 alpha (4.09, 3.93) and max|w| as the scale (-7.2)."""
    torch.manual_seed(0)
    w = torch.randn(48, 128)
    spec = TensorQuantSpec("binary", "per_channel")
    w_hat = dequantize_weight(quantize_weight(w, spec, "w"), spec)
    floor = dict(((f, g), v) for f, g, v in SPECS)[("binary", "per_channel")]
    assert sqnr_db(w, w_hat) > floor
    sign = torch.sign(w)
    for wrong in (sign, 0.8 * w_hat, 1.25 * w_hat, sign * w.abs().amax(dim=1, keepdim=True)):
        assert sqnr_db(w, wrong) < floor


def test_ternary_follows_twn_threshold_and_scale() -> None:
    w = torch.tensor([[0.1, -0.2, 1.0, -2.0, 0.3, 0.0]])  # mean|w| = 0.6, Δ = 0.42
    spec = TensorQuantSpec("ternary", "per_channel")
    w_hat = dequantize_weight(quantize_weight(w, spec, "w"), spec)
    assert torch.allclose(w_hat, torch.tensor([[0.0, 0.0, 1.5, -1.5, 0.0, 0.0]]))


def test_codebooks_are_per_layer_or_per_channel_and_fp16() -> None:
    w = torch.randn(8, 64)
    layer = quantize_weight(w, TensorQuantSpec("kmeans16", "per_tensor"), "w")
    rows = quantize_weight(w, TensorQuantSpec("kmeans16", "per_channel"), "w")
    assert layer.codebook.shape == (1, 16) and rows.codebook.shape == (8, 16)
    assert layer.codebook.dtype == torch.float16 and layer.scale is None
    scaled = quantize_weight(w, TensorQuantSpec("kmeans16", "per_group:32"), "w")
    assert scaled.codebook.shape == (1, 16) and scaled.scale.shape == (8, 2)


def test_nan_weights_are_named() -> None:
    w = torch.randn(4, 8)
    w[1, 2] = float("nan")
    with pytest.raises(InvalidModelError, match="layer.weight"):
        quantize_weight(w, TensorQuantSpec("nf4", "per_channel"), "layer.weight")


@settings(max_examples=40, deadline=None)
@given(
    fmt=st.sampled_from(["nf4", "pot3", "binary", "ternary", "kmeans4"]),
    rows=st.integers(1, 6),
    cols=st.integers(2, 40),
    seed=st.integers(0, 1000),
)
def test_requantizing_dequantized_weights_is_a_fixed_point(fmt, rows, cols, seed) -> None:
    """Quantize(dequantize(q)) reproduces the same values: the grid is closed under the codec."""
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    spec = TensorQuantSpec(fmt, "per_channel" if fmt != "kmeans4" else "per_tensor")
    w1 = dequantize_weight(quantize_weight(w, spec, "w"), spec)
    w2 = dequantize_weight(quantize_weight(w1, spec, "w"), spec)
    assert torch.allclose(w1, w2, rtol=1e-5, atol=1e-7)


def test_codebooks_refuse_weights_beyond_fp16() -> None:
    w = torch.randn(4, 8)
    w[0, 0] = 1e6
    with pytest.raises(InvalidModelError, match="fp16"):
        quantize_weight(w, TensorQuantSpec("kmeans16", "per_tensor"), "w")
