"""QuantConv: int8 Conv1d/Conv2d (grouped, depthwise) on oneDNN vs the reference, SQNR floors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.calibrate import collect_input_ranges
from lowbit.config import QuantMode, QuantScheme, TensorQuantSpec
from lowbit.errors import InvalidModelError
from lowbit.kernels import cpu
from lowbit.measure import sqnr_db as sqnr
from lowbit.nn import QuantConv
from lowbit.nn.base import fake_quantize_dynamic, static_input_qparams
from lowbit.presets import get_preset

INT_PRESETS = ["W8A8", "W8A8-dynamic", "W8A16"]
W8 = TensorQuantSpec(format="int8", granularity="per_channel")

CONVS = {
    "conv2d": (lambda: nn.Conv2d(4, 8, 3, padding=1), (2, 4, 8, 8)),
    "grouped": (lambda: nn.Conv2d(4, 8, 3, padding=1, groups=2), (2, 4, 8, 8)),
    "depthwise": (lambda: nn.Conv2d(8, 8, 3, padding=1, groups=8), (2, 8, 8, 8)),
    "strided": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2), (2, 4, 9, 9)),
    "conv1d": (lambda: nn.Conv1d(4, 8, 3, padding=1), (2, 4, 12)),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def make(preset, conv: nn.Module, batches: list[torch.Tensor]) -> QuantConv:
    scheme = get_preset(preset) if isinstance(preset, str) else preset
    qparams = None
    if scheme.mode is QuantMode.STATIC:
        ranges = collect_input_ranges(conv, {"conv": (conv, scheme.activation)}, batches)
        qparams = static_input_qparams(scheme.activation, *ranges["conv"])
    return QuantConv.from_float(conv, scheme, qparams, name="conv")


def setup(case: str):
    torch.manual_seed(sorted(CONVS).index(case))
    make_conv, shape = CONVS[case]
    return make_conv(), [torch.randn(shape) for _ in range(2)], torch.randn(shape)


@pytest.mark.parametrize("preset", INT_PRESETS)
@pytest.mark.parametrize("case", sorted(CONVS))
def test_int8_weights_and_sqnr(preset: str, case: str) -> None:
    conv, batches, x = setup(case)
    q = make(preset, conv, batches)
    assert q.qweight.dtype == torch.int8 and q.qweight.shape == conv.weight.shape
    assert "weight" not in q.state_dict()
    assert q.weight_scale.shape == (conv.out_channels, 1)
    y = q(x)
    with torch.no_grad():
        yf = conv(x)
    assert y.shape == yf.shape and y.dtype == torch.float32
    assert sqnr(yf, y) >= 30.0


@pytest.mark.skipif(
    not cpu.onednn_qconv_exact(), reason="oneDNN int8 conv absent or saturating (no VNNI) here"
)
@pytest.mark.parametrize("preset", ["W8A8", "W8A8-dynamic"])
@pytest.mark.parametrize("case", sorted(CONVS))
def test_onednn_path_matches_reference(preset: str, case: str) -> None:
    conv, batches, x = setup(case)
    q = make(preset, conv, batches)
    assert q._fast and "onednn" in q.kernel
    qx, sx, zx = q._quantize_input(x)
    assert rel(q(x), q._conv_reference(qx, sx, zx)) < 1e-5


def test_weight_only_dequantizes_into_a_bf16_or_fp32_conv() -> None:
    conv, batches, x = setup("conv2d")
    q = make("W8A16", conv, batches)
    dt = cpu.dequant_dtype()  # bf16 where native, fp32 where bf16 would be emulated
    assert ("bf16" if dt is torch.bfloat16 else "fp32") in q.kernel
    w = q.dequantized_weight().to(dt)
    expected = nn.functional.conv2d(x.to(dt), w, q.bias.to(dt), padding=1)
    assert torch.equal(q(x), expected.float())


@pytest.mark.parametrize("preset", INT_PRESETS)
def test_without_bias(preset: str) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 7, 7)
    q = make(preset, conv, [x])
    assert q.bias is None and "bias" not in q.state_dict()
    with torch.no_grad():
        assert sqnr(conv(x), q(x)) >= 30.0


@pytest.mark.parametrize("preset", INT_PRESETS)
@pytest.mark.parametrize(
    ("case", "shape"),
    [("conv2d", (2, 3, 8, 8)), ("conv2d", (4, 8, 8)), ("conv2d", (2, 4, 8)), ("conv1d", (2, 4))],
)
def test_wrong_input_shape_raises_value_error(preset: str, case: str, shape) -> None:
    conv, batches, _ = setup(case)
    q = make(preset, conv, batches)
    with pytest.raises(ValueError, match=r"QuantConv expects \[batch, 4"):
        q(torch.randn(shape))


def test_output_is_contiguous_so_view_works() -> None:
    conv, batches, x = setup("conv2d")
    q = make("W8A8-dynamic", conv, batches)
    y = q(x)
    assert y.is_contiguous()
    assert y.view(2, -1).shape == (2, 8 * 8 * 8)


@pytest.mark.parametrize("preset", INT_PRESETS)
def test_output_dtype_follows_input(preset: str) -> None:
    conv, batches, x = setup("conv2d")
    q = make(preset, conv, batches)
    assert q(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_asymmetric_weights_fall_back_to_reference_loudly() -> None:
    conv, batches, x = setup("conv2d")
    weight = TensorQuantSpec(format="int8", granularity="per_channel", symmetric=False)
    scheme = QuantScheme(
        name="asym", mode="dynamic", weight=weight, activation=get_preset("W8A8").activation
    )
    with pytest.warns(RuntimeWarning, match="symmetric per-channel"):
        q = QuantConv.from_float(conv, scheme)
    assert not q._fast and q.kernel.startswith("reference")
    with torch.no_grad():
        assert sqnr(conv(x), q(x)) >= 30.0


@pytest.mark.parametrize(
    "bad_kwargs", [{"padding_mode": "reflect", "padding": 1}, {"padding": "same"}]
)
def test_non_zero_or_string_padding_is_rejected(bad_kwargs) -> None:
    conv = nn.Conv2d(3, 4, 3, **bad_kwargs)
    with pytest.raises(ValueError, match="zero padding"):
        QuantConv.from_float(conv, get_preset("W8A8-dynamic"))


def test_static_scheme_needs_input_qparams() -> None:
    with pytest.raises(ValueError, match="input_qparams"):
        QuantConv.from_float(nn.Conv2d(3, 4, 3), get_preset("W8A8"))


@pytest.mark.parametrize("preset", INT_PRESETS)
@pytest.mark.parametrize("param", ["weight", "bias"])
def test_nan_parameters_raise_naming_the_parameter(preset: str, param: str) -> None:
    conv, batches, _ = setup("conv2d")
    with torch.no_grad():
        getattr(conv, param).view(-1)[0] = float("nan")
    with pytest.raises(InvalidModelError, match=rf"conv\.{param} contains 1 NaN/Inf"):
        make(preset, conv, batches)


def test_from_spec_shell_reloads_exactly() -> None:
    conv, batches, x = setup("grouped")
    q = make("W8A8", conv, batches)
    shell = QuantConv.from_spec(q.layer_spec(), CONVS["grouped"][0]())
    shell.load_state_dict(q.state_dict())
    assert torch.equal(shell(x), q(x))


def test_static_16bit_activations_are_accurate() -> None:
    conv, batches, x = setup("conv2d")
    act = TensorQuantSpec(format="int16", symmetric=False)
    scheme = QuantScheme(name="W8A16i", mode="static", weight=W8, activation=act)
    with pytest.warns(RuntimeWarning):
        q = make(scheme, conv, batches)
    with torch.no_grad():
        assert sqnr(conv(x), q(x)) >= 30.0


def test_dynamic_activation_spec_is_honoured() -> None:
    conv, batches, x = setup("conv2d")
    act = TensorQuantSpec(format="int4", granularity="per_tensor", symmetric=True)
    scheme = QuantScheme(name="W8A4-dynamic", mode="dynamic", weight=W8, activation=act)
    with pytest.warns(RuntimeWarning):
        q = make(scheme, conv, batches)
    xd = fake_quantize_dynamic(x, act)
    expected = nn.functional.conv2d(xd, q.dequantized_weight(), q.bias, padding=1)
    assert rel(q(x), expected) < 1e-4
