"""Sub-8-bit and non-uniform weights inside Linear, Conv and Embedding layers.

The fast path (int4 kernel, or codes expanded to int8 for the int8 kernels) is checked against
each layer's reference path (dequantize the stored codes exactly, float matmul), and both
against the float layer with a floor that fits the format's precision.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lowbit
from lowbit.formats import get_format
from lowbit.measure import sqnr_db
from lowbit.nn import QuantConv, QuantEmbedding, QuantLinear

# preset -> (kernel substring, SQNR floor against float for a random 256->64 layer, seed 0):
# about 1 dB under the value measured (in the comment); binary 0.3 dB under it, since sign *
# mean|w| on uniform init weights gives only 10 log10(4) = 6.02 dB and 1.25x its scale 5.70
WEIGHT_ONLY = {
    "W4A16": ("int4pack", 23.4),  # 24.38
    "W4A16-g128": ("int4pack", 23.4),  # 24.43
    "W3A16-g128": ("int4pack", 16.4),  # 17.37
    "W2A16-g64": ("int4pack", 9.3),  # 10.34
    "NF4": ("int8pack", 20.2),  # 21.21
    "POT4": ("int8pack", 14.3),  # 15.31
    "KMEANS16": ("int8pack", 24.1),  # 25.12
    "KMEANS4": ("int8pack", 11.0),  # 12.02
    "TERNARY": ("int8pack", 8.5),  # 9.51
    "BINARY": ("int8pack", 5.75),  # 6.08
}
# the conv test's floors (Conv1d / Conv2d 64->32, k3, measured 1-D / 2-D): binary at 1.25x or
# 0.8x its scale gives 5.2-5.6 dB
CONV_FLOOR = {
    "NF4": 19.6,  # 20.87 / 20.65
    "KMEANS16": 22.8,  # 24.00 / 23.84
    "W4A16": 22.3,  # 23.51 / 23.34
    "BINARY": 5.75,  # 6.15 / 5.97
    "W4A8": 21.6,  # 22.60 / 22.60
}


@pytest.fixture()
def linear():
    torch.manual_seed(0)
    return nn.Linear(256, 64)


@pytest.mark.parametrize("preset", sorted(WEIGHT_ONLY))
def test_weight_only_linear_fast_path_matches_its_reference(linear, preset) -> None:
    kernel, floor = WEIGHT_ONLY[preset]
    q = QuantLinear.from_float(linear, lowbit.get_preset(preset))
    assert kernel in q.kernel and not q.kernel.startswith("reference")
    bits = get_format(q.scheme.weight.format).bits
    assert int(q.qweight.to(torch.int16).max()) < 2**bits
    x = torch.randn(6, 256)
    y = q(x)
    assert sqnr_db(q._forward_reference(x), y) > 30  # bf16 activations, int8 expansion
    assert sqnr_db(linear(x), y) > floor


def test_int8_expansion_is_exact_for_binary_and_ternary_and_rounded_for_nf4(linear) -> None:
    for preset, exact in (("BINARY", True), ("TERNARY", True), ("NF4", False)):
        q = QuantLinear.from_float(linear, lowbit.get_preset(preset))
        int8 = q.int8_weight()
        assert math.isinf(int8.sqnr_db) is exact and int8.q.dtype == torch.int8
        rebuilt = int8.q.float() * int8.scale[:, None]
        assert sqnr_db(q.dequantized_weight(), rebuilt) > (100 if exact else 35)
        assert ("dB)" in q.kernel) is (not exact)


@pytest.mark.parametrize("preset", ["NF4", "W4A16-g128"])
def test_rows_with_uneven_groups_keep_their_small_groups(preset) -> None:
    """A per-channel int8 expansion would flatten the small group: the layer avoids it."""
    torch.manual_seed(0)
    layer = nn.Linear(256, 24)  # out % 16 != 0: W4A16-g128 cannot take the int4 kernel
    with torch.no_grad():
        layer.weight[:, :128] *= 0.01
    q = QuantLinear.from_float(layer, lowbit.get_preset(preset))
    assert q.int8_weight().sqnr_db < 30 and "dequantized at load" in q.kernel
    x = torch.randn(5, 256)
    small = torch.zeros_like(x)
    small[:, :128] = x[:, :128]  # only the small group contributes
    assert sqnr_db(q._forward_reference(small), q(small)) > 35
    assert sqnr_db(nn.functional.linear(small, layer.weight), q(small) - layer.bias) > 15


def test_wide_asymmetric_int8_codes_are_not_rounded_again(linear) -> None:
    spec = lowbit.TensorQuantSpec("int8", "per_channel", symmetric=False)
    scheme = lowbit.QuantScheme("W8-asym", "weight_only", weight=spec, compute_dtype="bf16")
    with pytest.warns(RuntimeWarning, match="per-channel symmetric"):
        q = QuantLinear.from_float(linear, scheme)
    assert q.int8_weight() is None and q.kernel.startswith("reference")


@pytest.mark.parametrize("preset", ["W4A8", "W4A8-dynamic"])
def test_w4a8_runs_4_bit_codes_on_the_int8_gemm(linear, preset) -> None:
    calib = [torch.randn(32, 256)]
    q = lowbit.quantize(linear, preset, calibration=calib)
    assert q.qweight.dtype == torch.int8 and int(q.qweight.min()) >= -8
    assert (
        int(q.qweight.max()) <= 7
        and "int8 x int8 -> int32" in q.kernel
        and "expanded" not in q.kernel
    )
    x = torch.randn(8, 256)
    assert sqnr_db(q._forward_reference(x), q(x)) > 35
    assert sqnr_db(linear(x), q(x)) > 12


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("preset", sorted(CONV_FLOOR))
def test_conv_layers_take_low_bit_weights(dims, preset) -> None:
    torch.manual_seed(0)
    conv = (nn.Conv1d if dims == 1 else nn.Conv2d)(64, 32, 3, padding=1)  # rows of 192 / 576
    shape = (2, 64, 20) if dims == 1 else (2, 64, 9, 9)
    calib = [torch.randn(*shape)]
    q = lowbit.quantize(nn.Sequential(conv), preset, calibration=calib)[0]
    assert isinstance(q, QuantConv)
    x = torch.randn(*shape)
    y = q(x)
    w = q.dequantized_weight()
    ref = (nn.functional.conv1d if dims == 1 else nn.functional.conv2d)(x, w, q.bias, padding=1)
    assert sqnr_db(conv(x), y) > CONV_FLOOR[preset]
    if preset != "W4A8":  # weight-only: bf16 conv of the dequantized weight
        assert sqnr_db(ref, y) > 35


@pytest.mark.parametrize("preset", ["NF4", "KMEANS16", "W4A16-g128", "TERNARY"])
def test_embedding_gathers_low_bit_rows_exactly(preset) -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(300, 128)
    q = QuantEmbedding.from_float(emb, lowbit.get_preset(preset))
    ids = torch.tensor([[0, 5, 299], [7, 7, 1]])
    table = q.dequantized_weight()
    assert torch.equal(q(ids), table[ids])
    assert "dequantize" in q.kernel
    assert sqnr_db(emb(ids), q(ids)) > (5 if preset == "TERNARY" else 15)


def test_embedding_groups_fall_back_to_rows_when_they_do_not_divide() -> None:
    q = QuantEmbedding.from_float(nn.Embedding(10, 96), lowbit.get_preset("W4A16-g128"))
    assert q.scheme.weight.granularity == "per_channel"
    assert q(torch.tensor([3])).shape == (1, 96)
    spec = lowbit.TensorQuantSpec("kmeans16", "per_group:32")
    scheme = lowbit.QuantScheme("km-g32", "weight_only", weight=spec, compute_dtype="bf16")
    model = lowbit.quantize(nn.Sequential(nn.Embedding(50, 24)), scheme)
    assert model[0].scheme.weight.granularity == "per_tensor"
    assert model(torch.tensor([[1, 2]])).shape == (1, 2, 24)


@pytest.mark.parametrize("preset", ["NF4", "KMEANS16", "W4A16-g128", "W8A8-dynamic"])
def test_embedding_lookup_of_no_ids(preset) -> None:
    q = QuantEmbedding.from_float(nn.Embedding(20, 64), lowbit.get_preset(preset))
    assert q(torch.zeros(0, dtype=torch.long)).shape == (0, 64)
    assert q(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0, 64)


def test_group_size_that_does_not_divide_a_layer_keeps_it_float() -> None:
    model = nn.Sequential(nn.Linear(96, 128), nn.ReLU(), nn.Linear(128, 16))
    q = lowbit.quantize(model, "W4A16-g128")
    assert isinstance(q[0], nn.Linear) and isinstance(q[2], QuantLinear)
    assert "does not divide" in q.lowbit_record.skipped["0"]
