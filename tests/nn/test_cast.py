"""CastLayer: FP16 / BF16 passthrough layers (half-size weights, float outputs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.errors import InvalidModelError
from lowbit.kernels import cpu
from lowbit.measure import sqnr_db as sqnr
from lowbit.nn import CastLayer
from lowbit.presets import get_preset

DTYPES = {"FP16": torch.float16, "BF16": torch.bfloat16}
SQNR_FLOOR = {"FP16": 60.0, "BF16": 40.0}


def layers():
    torch.manual_seed(0)
    return {
        "linear": (nn.Linear(24, 10), (6, 24)),
        "linear_3d": (nn.Linear(24, 10), (2, 5, 24)),
        "linear_gemv": (nn.Linear(24, 10), (2, 24)),  # fp16 runs natively for <= 4 rows
        "linear_no_bias": (nn.Linear(24, 10, bias=False), (6, 24)),
        "conv2d": (nn.Conv2d(3, 6, 3, padding=1), (2, 3, 7, 7)),
        "conv2d_grouped": (nn.Conv2d(4, 8, 3, stride=2, groups=2), (2, 4, 9, 9)),
        "conv1d": (nn.Conv1d(3, 6, 3, dilation=2, bias=False), (2, 3, 11)),
    }


CASES = sorted(layers())


@pytest.mark.parametrize("preset", sorted(DTYPES))
@pytest.mark.parametrize("case", CASES)
def test_cast_layer_matches_float(preset: str, case: str) -> None:
    module, shape = layers()[case]
    q = CastLayer.from_float(module, get_preset(preset))
    assert q.weight.dtype == DTYPES[preset]
    if module.bias is None:
        assert q.bias is None
    else:
        assert q.bias.dtype == DTYPES[preset]
    x = torch.randn(shape)
    y = q(x)
    with torch.no_grad():
        yf = module(x)
    assert y.shape == yf.shape and y.dtype == torch.float32
    assert sqnr(yf, y) >= SQNR_FLOOR[preset]


@pytest.mark.parametrize("preset", sorted(DTYPES))
def test_weights_are_half_precision_values_of_the_float_weights(preset: str) -> None:
    lin = nn.Linear(24, 10)
    q = CastLayer.from_float(lin, get_preset(preset))
    assert torch.equal(q.weight, lin.weight.detach().to(DTYPES[preset]))
    assert not any(p.requires_grad for p in q.parameters())
    assert q.state_dict()["weight"].element_size() == 2


@pytest.mark.parametrize("preset", sorted(DTYPES))
def test_output_dtype_follows_input(preset: str) -> None:
    q = CastLayer.from_float(nn.Linear(8, 4), get_preset(preset))
    assert q(torch.randn(3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert q(torch.randn(3, 8, dtype=torch.float64)).dtype == torch.float64


def test_fp16_compute_dtype_depends_on_rows() -> None:
    q = CastLayer.from_float(nn.Linear(8, 4), get_preset("FP16"))
    assert q._compute_dtype(torch.randn(4, 8)) == torch.float16
    assert q._compute_dtype(torch.randn(5, 8)) == torch.float32
    assert q._compute_dtype(torch.randn(2, 2, 8)) == torch.float16
    conv = CastLayer.from_float(nn.Conv2d(3, 4, 1), get_preset("FP16"))
    assert conv._compute_dtype(torch.randn(1, 3, 2, 2)) == torch.float32
    bf = CastLayer.from_float(nn.Linear(8, 4), get_preset("BF16"))
    native = torch.bfloat16 if cpu.native_bf16() else torch.float32  # emulated bf16 is slow
    assert bf._compute_dtype(torch.randn(100, 8)) == native


@pytest.mark.parametrize("preset", sorted(DTYPES))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_raise_naming_the_parameter(preset: str, bad: float) -> None:
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight[1, 2] = bad
    with pytest.raises(InvalidModelError, match=r"fc\.weight contains 1 NaN/Inf"):
        CastLayer.from_float(lin, get_preset(preset), name="fc")


def test_reflect_padding_is_rejected() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ValueError, match="zero-padded"):
        CastLayer.from_float(conv, get_preset("BF16"))


def test_from_spec_reloads_exactly() -> None:
    conv = nn.Conv2d(3, 6, 3, padding=1)
    q = CastLayer.from_float(conv, get_preset("BF16"))
    shell = CastLayer.from_spec(q.layer_spec(), nn.Conv2d(3, 6, 3, padding=1))
    shell.load_state_dict(q.state_dict())
    x = torch.randn(1, 3, 5, 5)
    assert torch.equal(shell(x), q(x))


@pytest.mark.parametrize(
    ("module", "shape"), [(nn.Linear(8, 4), (2, 7)), (nn.Conv2d(3, 4, 3), (1, 2, 5, 5))]
)
def test_wrong_input_shape_raises_value_error(module: nn.Module, shape) -> None:
    q = CastLayer.from_float(module, get_preset("BF16"))
    with pytest.raises(ValueError):
        q(torch.randn(shape))


def test_nan_bias_raises() -> None:
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.bias[0] = float("nan")
    with pytest.raises(InvalidModelError, match=r"fc\.bias"):
        CastLayer.from_float(lin, get_preset("FP16"), name="fc")


def test_fp16_overflowing_weight_is_not_silently_inf() -> None:
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight[0, 0] = 1e5
    with pytest.raises(InvalidModelError, match="fp16"):
        CastLayer.from_float(lin, get_preset("FP16"), name="fc")
