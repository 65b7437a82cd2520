"""QuantLinear: integer weights, fast kernels vs the reference path, SQNR floors, errors."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from lowbit.calibrate import collect_input_ranges
from lowbit.config import QuantMode, QuantScheme, TensorQuantSpec
from lowbit.errors import InvalidModelError
from lowbit.measure import sqnr_db as sqnr
from lowbit.nn import QuantLinear
from lowbit.nn.base import static_input_qparams
from lowbit.presets import get_preset

INT_PRESETS = ["W8A8", "W8A8-dynamic", "W8A16"]
SQNR_FLOOR = {"W8A8": 30.0, "W8A8-dynamic": 30.0, "W8A16": 35.0}
W8 = TensorQuantSpec(format="int8", granularity="per_channel")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def make(preset: str | QuantScheme, lin: nn.Linear, batches: list[torch.Tensor]) -> QuantLinear:
    """Quantize ``lin``; static schemes get qparams calibrated on ``batches``."""
    scheme = get_preset(preset) if isinstance(preset, str) else preset
    qparams = None
    if scheme.mode is QuantMode.STATIC:
        ranges = collect_input_ranges(lin, {"fc": (lin, scheme.activation)}, batches)
        qparams = static_input_qparams(scheme.activation, *ranges["fc"])
    return QuantLinear.from_float(lin, scheme, qparams, name="fc")


@pytest.fixture
def data():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    batches = [torch.randn(8, 64) for _ in range(3)]
    return lin, batches, torch.randn(6, 64)


@pytest.mark.parametrize("preset", INT_PRESETS)
def test_weights_are_stored_as_int8(preset, data) -> None:
    lin, batches, _ = data
    q = make(preset, lin, batches)
    state = q.state_dict()
    assert q.qweight.dtype == torch.int8 and q.qweight.shape == (32, 64)
    assert "weight" not in state  # no float copy of the weight
    assert q.weight_scale.dtype == torch.float32 and q.weight_scale.shape == (32, 1)
    assert q.weight_zero_point.dtype == torch.int32
    assert not any(p.requires_grad for p in q.parameters())
    w = lin.weight.detach()
    step = q.weight_scale  # symmetric absmax per row: max|w| / 127
    torch.testing.assert_close(step, w.abs().amax(dim=1, keepdim=True) / 127, rtol=1e-6, atol=0)
    err = (q.dequantized_weight() - w).abs()  # round to nearest: at most half a step
    assert bool((err <= step / 2 * (1 + 1e-5)).all()), float((err / step).max())
    if preset == "W8A8":
        assert q.input_scale.shape == () and q.input_zero_point.dtype == torch.int32


@pytest.mark.parametrize("preset", INT_PRESETS)
def test_fast_path_matches_reference(preset, data) -> None:
    lin, batches, x = data
    q = make(preset, lin, batches)
    assert q._fast, q.kernel
    ref = q._forward_reference(x)
    tol = 1e-2 if preset == "W8A16" else 1e-5  # bf16 output vs fp32/fp64 epilogue
    assert rel(q(x), ref) < tol


@pytest.mark.parametrize("preset", INT_PRESETS)
def test_sqnr_floor(preset, data) -> None:
    lin, batches, x = data
    q = make(preset, lin, batches)
    with torch.no_grad():
        assert sqnr(lin(x), q(x)) >= SQNR_FLOOR[preset]


@pytest.mark.parametrize("preset", INT_PRESETS)
def test_three_dimensional_inputs(preset, data) -> None:
    lin, batches, _ = data
    q = make(preset, lin, batches)
    x3 = torch.randn(2, 5, 64)
    y3 = q(x3)
    assert y3.shape == (2, 5, 32)
    assert rel(y3, q(x3.reshape(10, 64)).reshape(2, 5, 32)) < 1e-6
    with torch.no_grad():
        assert sqnr(lin(x3), y3) >= SQNR_FLOOR[preset]


@pytest.mark.parametrize("preset", INT_PRESETS)
def test_without_bias(preset, data) -> None:
    _, batches, x = data
    lin = nn.Linear(64, 32, bias=False)
    q = make(preset, lin, batches)
    assert q.bias is None and "bias" not in q.state_dict()
    tol = 1e-2 if preset == "W8A16" else 1e-5
    assert rel(q(x), q._forward_reference(x)) < tol
    with torch.no_grad():
        assert sqnr(lin(x), q(x)) >= SQNR_FLOOR[preset]


@pytest.mark.parametrize("preset", INT_PRESETS)
@pytest.mark.parametrize("shape", [(6, 63), (6, 65), (64,) + (2,), (2, 3, 7)])
def test_wrong_input_shape_raises_value_error(preset, shape, data) -> None:
    lin, batches, _ = data
    q = make(preset, lin, batches)
    with pytest.raises(ValueError, match="last dimension 64"):
        q(torch.randn(shape))


def test_single_vector_input(data) -> None:
    lin, batches, _ = data
    q = make("W8A8-dynamic", lin, batches)
    x = torch.randn(64)
    assert q(x).shape == (32,)


@pytest.mark.parametrize("preset", INT_PRESETS)
def test_output_dtype_follows_input(preset, data) -> None:
    lin, batches, x = data
    q = make(preset, lin, batches)
    assert q(x).dtype == torch.float32
    assert q(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_w8a16_k_not_multiple_of_16_falls_back_loudly() -> None:
    torch.manual_seed(1)
    lin = nn.Linear(17, 12)
    with pytest.warns(RuntimeWarning, match="multiple of 16"):
        q = QuantLinear.from_float(lin, get_preset("W8A16"))
    assert not q._fast and q.kernel.startswith("reference")
    x = torch.randn(5, 17)
    y = q(x)
    assert torch.equal(y, q._forward_reference(x))
    with torch.no_grad():
        assert sqnr(lin(x), y) >= 35.0
    assert q(torch.randn(2, 3, 17)).shape == (2, 3, 12)


def test_w8a16_fast_path_has_no_warning(data) -> None:
    lin, _, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = QuantLinear.from_float(lin, get_preset("W8A16"))
    assert "_weight_int8pack_mm" in q.kernel


@pytest.mark.parametrize(
    ("weight", "match"),
    [
        (TensorQuantSpec(format="int8", granularity="per_channel", symmetric=False), "symmetric"),
        (TensorQuantSpec(format="int8", granularity="per_group:16"), "symmetric"),
    ],
)
def test_unsupported_weight_grids_fall_back_to_reference(weight, match, data) -> None:
    lin, _, x = data
    act = TensorQuantSpec(format="int8", granularity="per_token")
    scheme = QuantScheme(name="custom", mode="dynamic", weight=weight, activation=act)
    with pytest.warns(RuntimeWarning, match=match):
        q = QuantLinear.from_float(lin, scheme)
    assert not q._fast
    assert torch.equal(q(x), q._forward_reference(x))
    with torch.no_grad():
        assert sqnr(lin(x), q(x)) >= 30.0


@pytest.mark.parametrize("act_format", ["uint8", "int8"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_static_activation_grids_fast_matches_reference(act_format, symmetric, data) -> None:
    lin, batches, x = data
    act = TensorQuantSpec(format=act_format, symmetric=symmetric)
    scheme = QuantScheme(name="custom", mode="static", weight=W8, activation=act)
    q = make(scheme, lin, batches)
    assert q._fast
    assert rel(q(x), q._forward_reference(x)) < 1e-5
    with torch.no_grad():
        assert sqnr(lin(x), q(x)) >= 30.0


def test_static_16bit_activations_use_reference_path(data) -> None:
    lin, batches, x = data
    act = TensorQuantSpec(format="int16", symmetric=False)
    scheme = QuantScheme(name="W8A16i", mode="static", weight=W8, activation=act)
    with pytest.warns(RuntimeWarning, match="wider than 8 bits"):
        q = make(scheme, lin, batches)
    with torch.no_grad():
        assert sqnr(lin(x), q(x)) >= 40.0


def test_dynamic_per_tensor_activations(data) -> None:
    lin, _, x = data
    act = TensorQuantSpec(format="int8", granularity="per_tensor")
    q = QuantLinear.from_float(
        lin, QuantScheme(name="d", mode="dynamic", weight=W8, activation=act)
    )
    assert q._fast and not q._per_token
    assert rel(q(x), q._forward_reference(x)) < 1e-5


def test_static_scheme_needs_input_qparams(data) -> None:
    lin, _, _ = data
    with pytest.raises(ValueError, match="input_qparams"):
        QuantLinear.from_float(lin, get_preset("W8A8"))


@pytest.mark.parametrize("preset", INT_PRESETS)
@pytest.mark.parametrize("param", ["weight", "bias"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_parameters_raise_naming_the_parameter(preset, param, bad, data) -> None:
    lin, batches, _ = data
    with torch.no_grad():
        getattr(lin, param).view(-1)[3] = bad
    with pytest.raises(InvalidModelError, match=rf"fc\.{param} contains 1 NaN/Inf"):
        make(preset, lin, batches)


def test_from_spec_shell_has_the_same_layout(data) -> None:
    lin, batches, x = data
    q = make("W8A8", lin, batches)
    shell = QuantLinear.from_spec(q.layer_spec(), nn.Linear(64, 32))
    assert {k: (v.shape, v.dtype) for k, v in shell.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in q.state_dict().items()
    }
    shell.load_state_dict(q.state_dict())
    assert torch.equal(shell(x), q(x))  # derived kernel data follows the loaded tensors


def test_layer_spec_is_json_plain(data) -> None:
    lin, batches, _ = data
    spec = make("W8A8-dynamic", lin, batches).layer_spec()
    assert spec["type"] == "QuantLinear"
    assert json.loads(json.dumps(spec)) == spec
    assert QuantScheme.from_dict(spec["scheme"]) == get_preset("W8A8-dynamic")
