"""``lowbit.quantize`` end to end: calibration forms, targeting, records, and errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from _models import small_cnn
from torch import nn

import lowbit
from lowbit.errors import (
    CalibrationError,
    ConfigError,
    InvalidModelError,
    NothingQuantizedWarning,
    UnknownPresetError,
    UnsupportedLayerError,
)
from lowbit.measure import sqnr_db as sqnr
from lowbit.nn import CastLayer, QuantConv, QuantLinear
from lowbit.transforms.bn_fold import FoldedBatchNorm

SQNR_FLOOR = {"W8A8": 25.0, "W8A8-dynamic": 25.0, "W8A16": 30.0, "FP16": 60.0, "BF16": 35.0}
EXPECTED_TYPES = {
    "W8A8": QuantConv,
    "W8A8-dynamic": QuantConv,
    "W8A16": QuantConv,
    "FP16": CastLayer,
    "BF16": CastLayer,
}


class KeywordNet(nn.Module):
    """A model whose forward takes keyword arguments only."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, *, x, scale=1.0):
        return self.fc(x) * scale


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 8)
        self.b = nn.Linear(16, 8)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


def batches(n: int = 3, shape=(4, 3, 8, 8)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return [torch.randn(shape, generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(9))


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


# -- end to end -------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", sorted(SQNR_FLOOR))
def test_every_preset_quantizes_the_small_cnn(preset: str, x) -> None:
    model = small_cnn()
    qmodel = lowbit.quantize(model, preset, calibration=batches())
    cls = EXPECTED_TYPES[preset]
    assert isinstance(qmodel.conv, cls) and isinstance(qmodel.dw, cls)
    assert isinstance(qmodel.fc, QuantLinear if cls is QuantConv else CastLayer)
    assert isinstance(qmodel.bn, FoldedBatchNorm)
    if cls is QuantConv:
        assert qmodel.conv.qweight.dtype == torch.int8
        assert qmodel.fc.qweight.dtype == torch.int8
    record = qmodel.lowbit_record
    assert isinstance(record, lowbit.QuantizationRecord)
    assert set(record.layers) == {"conv", "dw", "fc"}
    assert record.folded == [{"conv": "conv", "bn": "bn", "bias_added": True}]
    assert record.skipped == {}
    assert record.config.scheme == lowbit.get_preset(preset)
    assert not qmodel.training
    assert _no_hooks(qmodel)
    with torch.no_grad():
        assert sqnr(model(x), qmodel(x)) >= SQNR_FLOOR[preset]


def test_accepts_scheme_and_config_values(x) -> None:
    model = small_cnn()
    by_scheme = lowbit.quantize(model, lowbit.get_preset("W8A8-dynamic"))
    by_config = lowbit.quantize(model, lowbit.QuantConfig(lowbit.get_preset("W8A8-dynamic")))
    by_name = lowbit.quantize(model, "w8a8-DYNAMIC")
    assert torch.equal(by_scheme(x), by_config(x)) and torch.equal(by_scheme(x), by_name(x))


def test_fold_batchnorm_can_be_disabled() -> None:
    cfg = lowbit.QuantConfig(lowbit.get_preset("W8A8-dynamic"), fold_batchnorm=False)
    qmodel = lowbit.quantize(small_cnn(), cfg)
    assert isinstance(qmodel.bn, nn.BatchNorm2d)
    assert qmodel.lowbit_record.folded == []


# -- calibration forms ------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["list", "tuples", "lists", "generator", "bare_tensor"])
def test_calibration_forms(form: str, x) -> None:
    data = batches()
    calibration = {
        "list": data,
        "tuples": [(b,) for b in data],
        "lists": [[b] for b in data],
        "generator": (b for b in data),
        "bare_tensor": torch.cat(data),
    }[form]
    qmodel = lowbit.quantize(small_cnn(), "W8A8", calibration=calibration)
    reference = lowbit.quantize(small_cnn(), "W8A8", calibration=data)
    assert set(qmodel.lowbit_record.layers) == {"conv", "dw", "fc"}
    # every form sees the same samples, so the calibrated ranges agree
    assert torch.equal(qmodel.fc.input_scale, reference.fc.input_scale)
    assert torch.equal(qmodel(x), reference(x))


@pytest.mark.parametrize("as_list", [True, False])
def test_calibration_as_keyword_dicts(as_list: bool) -> None:
    torch.manual_seed(0)
    model = KeywordNet().eval()
    data = [{"x": torch.randn(5, 16), "scale": 2.0} for _ in range(2)]
    qmodel = lowbit.quantize(model, "W8A8", calibration=data if as_list else data[0])
    assert isinstance(qmodel.fc, QuantLinear)
    xin = torch.randn(3, 16)
    with torch.no_grad():
        assert sqnr(model(x=xin), qmodel(x=xin)) >= 25.0


def test_calibration_tuples_are_positional_arguments() -> None:
    torch.manual_seed(0)
    model = TwoInputs().eval()
    data = [(torch.randn(4, 16), 5 * torch.randn(4, 16)) for _ in range(2)]
    qmodel = lowbit.quantize(model, "W8A8", calibration=data)
    assert float(qmodel.b.input_scale) > 3 * float(qmodel.a.input_scale)  # b saw the wider input


def test_layers_not_reached_by_calibration_stay_float() -> None:
    class Partial(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(16, 16)
            self.unused = nn.Linear(16, 16)

        def forward(self, x):
            return self.used(x)

    qmodel = lowbit.quantize(Partial(), "W8A8", calibration=[torch.randn(2, 16)])
    assert isinstance(qmodel.used, QuantLinear)
    assert type(qmodel.unused) is nn.Linear
    assert "no calibration batch" in qmodel.lowbit_record.skipped["unused"]


# -- inplace ----------------------------------------------------------------------------------
def test_inplace_false_leaves_the_original_untouched(x) -> None:
    model = small_cnn().train()
    state = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        before = model.eval()(x)
    model.train()
    qmodel = lowbit.quantize(model, "W8A8", calibration=batches())
    assert qmodel is not model
    assert model.training  # mode untouched as well
    assert type(model.conv) is nn.Conv2d and type(model.bn) is nn.BatchNorm2d
    assert type(model.fc) is nn.Linear and model.conv.bias is None
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert not hasattr(model, "lowbit_record")
    assert _no_hooks(model)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), before)


def test_inplace_true_modifies_the_model() -> None:
    model = small_cnn()
    qmodel = lowbit.quantize(model, "W8A8-dynamic", inplace=True)
    assert qmodel is model
    assert isinstance(model.fc, QuantLinear)


# -- targeting --------------------------------------------------------------------------------
def test_exclude_keeps_layers_float() -> None:
    qmodel = lowbit.quantize(small_cnn(), "W8A8-dynamic", exclude=["fc", "dw"])
    assert isinstance(qmodel.conv, QuantConv)
    assert type(qmodel.dw) is nn.Conv2d and type(qmodel.fc) is nn.Linear
    assert qmodel.lowbit_record.skipped == {
        "dw": "excluded by include/exclude patterns",
        "fc": "excluded by include/exclude patterns",
    }


def test_exclude_accepts_a_single_string() -> None:
    qmodel = lowbit.quantize(small_cnn(), "W8A8-dynamic", exclude="fc")
    assert type(qmodel.fc) is nn.Linear and isinstance(qmodel.dw, QuantConv)


def test_include_limits_quantization() -> None:
    qmodel = lowbit.quantize(small_cnn(), "W8A8-dynamic", include=["d*"])
    assert isinstance(qmodel.dw, QuantConv)
    assert type(qmodel.conv) is nn.Conv2d and type(qmodel.fc) is nn.Linear


def test_overrides_give_mixed_precision() -> None:
    qmodel = lowbit.quantize(
        small_cnn(),
        "W8A8",
        calibration=batches(),
        overrides={"fc": "BF16", "dw": lowbit.get_preset("W8A16")},
    )
    assert isinstance(qmodel.fc, CastLayer) and qmodel.fc.weight.dtype == torch.bfloat16
    assert isinstance(qmodel.dw, QuantConv) and qmodel.dw.scheme.name == "W8A16"
    assert isinstance(qmodel.conv, QuantConv) and qmodel.conv.scheme.name == "W8A8"
    layers = qmodel.lowbit_record.layers
    assert layers["fc"]["type"] == "CastLayer" and layers["fc"]["scheme"]["name"] == "BF16"


def test_override_none_keeps_a_layer_float() -> None:
    qmodel = lowbit.quantize(small_cnn(), "W8A8-dynamic", overrides={"fc": None})
    assert type(qmodel.fc) is nn.Linear
    assert isinstance(qmodel.conv, QuantConv) and isinstance(qmodel.dw, QuantConv)
    assert "fc" in qmodel.lowbit_record.skipped


def test_static_layers_overridden_to_dynamic_need_no_calibration() -> None:
    qmodel = lowbit.quantize(small_cnn(), "W8A16", overrides={"*": "W8A8-dynamic"})
    assert all(m.scheme.name == "W8A8-dynamic" for m in (qmodel.conv, qmodel.dw, qmodel.fc))


# -- unsupported layers -----------------------------------------------------------------------
class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.c3 = nn.Conv3d(2, 2, 1)
        self.reflect = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
        self.same = nn.Conv2d(2, 2, 3, padding="same")
        self.tconv = nn.ConvTranspose2d(2, 2, 3)
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return self.fc(x)


def test_unsupported_layers_are_skipped_with_a_reason() -> None:
    qmodel = lowbit.quantize(Unsupported(), "W8A8-dynamic")
    skipped = qmodel.lowbit_record.skipped
    assert "Conv3d" in skipped["c3"] and "no quantized implementation" in skipped["c3"]
    assert "padding_mode='reflect'" in skipped["reflect"]
    assert "padding='same'" in skipped["same"]
    assert "ConvTranspose2d" in skipped["tconv"]
    assert type(qmodel.c3) is nn.Conv3d and type(qmodel.reflect) is nn.Conv2d
    assert isinstance(qmodel.fc, QuantLinear)
    assert set(qmodel.lowbit_record.layers) == {"fc"}


def test_model_without_quantizable_layers_warns_and_returns_an_empty_record() -> None:
    with pytest.warns(NothingQuantizedWarning, match="Sequential has no nn.Linear"):
        qmodel = lowbit.quantize(nn.Sequential(nn.ReLU()), "W8A8-dynamic")
    assert qmodel.lowbit_record.layers == {} and qmodel.lowbit_record.skipped == {}


def test_nothing_quantized_names_the_reasons_and_raises_under_strict() -> None:
    """Every layer left float used to be a log line only (issue 18)."""
    model = nn.Sequential(nn.Linear(27, 8), nn.ReLU(), nn.Linear(8, 4))  # g128 fits no row
    with pytest.warns(NothingQuantizedWarning, match=r"still float32: .*'0': group size 128"):
        lowbit.quantize(model, "W4A16-g128")
    with pytest.raises(UnsupportedLayerError, match="quantized no layer.*'2': group size 128"):
        lowbit.quantize(model, "W4A16-g128", strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NothingQuantizedWarning)
        lowbit.quantize(model, "W8A8-dynamic", strict=True)  # quantizes: neither


# -- a bare layer -----------------------------------------------------------------------------
@pytest.mark.parametrize("preset", sorted(SQNR_FLOOR))
def test_quantizing_a_bare_linear(preset: str) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(32, 8)
    xin = torch.randn(4, 32)
    qlin = lowbit.quantize(lin, preset, calibration=xin)
    assert isinstance(qlin, CastLayer if preset in ("FP16", "BF16") else QuantLinear)
    assert set(qlin.lowbit_record.layers) == {""}
    assert type(lin) is nn.Linear  # the original is untouched
    with torch.no_grad():
        assert sqnr(lin(xin), qlin(xin)) >= SQNR_FLOOR[preset]


# -- errors -----------------------------------------------------------------------------------
def test_static_scheme_without_calibration_raises() -> None:
    with pytest.raises(CalibrationError, match="needs calibration data"):
        lowbit.quantize(small_cnn(), "W8A8")


def test_empty_calibration_raises() -> None:
    with pytest.raises(CalibrationError, match="empty"):
        lowbit.quantize(small_cnn(), "W8A8", calibration=[])


@pytest.mark.parametrize(
    ("calibration", "match"),
    [
        ("not a batch", "iterable of batches, got str"),
        (7, "iterable of batches, got int"),
        (["abc"], "item 0 is a str"),
        ([torch.randn(1, 3, 8, 8), 5], "item 1 is a int"),
        ([None], "item 0 is a NoneType"),
    ],
)
def test_calibration_items_of_the_wrong_type_raise(calibration, match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        lowbit.quantize(small_cnn(), "W8A8", calibration=calibration)


def test_calibration_batches_the_model_rejects_raise() -> None:
    model = small_cnn()
    with pytest.raises(CalibrationError, match="failed on calibration batch 0"):
        lowbit.quantize(model, "W8A8", calibration=[torch.randn(2, 5, 8, 8)], inplace=True)
    assert _no_hooks(model)  # the calibration hooks are removed even on failure


@pytest.mark.parametrize("where", ["conv.weight", "fc.bias", "bn.running_var"])
def test_nan_weights_raise_naming_the_parameter(where: str) -> None:
    model = small_cnn()
    with torch.no_grad():
        model.state_dict(keep_vars=True)[where].view(-1)[0] = float("nan")
    with pytest.raises(InvalidModelError, match=rf"'{where}' contains 1 NaN/Inf"):
        lowbit.quantize(model, "W8A8-dynamic")


@pytest.mark.parametrize("name", ["W8A9", "W3A3", ""])
def test_unknown_preset_raises(name: str) -> None:
    with pytest.raises(UnknownPresetError, match="Known presets"):
        lowbit.quantize(small_cnn(), name)


def test_scheme_of_the_wrong_type_raises() -> None:
    with pytest.raises(ConfigError, match="preset name or a QuantScheme"):
        lowbit.quantize(small_cnn(), 8)  # type: ignore[arg-type]


@pytest.mark.parametrize("model", [None, "resnet18", 3, {"fc": nn.Linear(2, 2)}])
def test_non_modules_raise(model) -> None:
    with pytest.raises(InvalidModelError, match="takes a torch.nn.Module"):
        lowbit.quantize(model, "W8A8-dynamic")


def test_a_module_registered_under_two_names_is_quantized_everywhere() -> None:
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(16, 16)
            self.b = self.a

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    qmodel = lowbit.quantize(Shared(), "W8A8-dynamic")
    assert isinstance(qmodel.a, QuantLinear)
    assert qmodel.b is qmodel.a


class _StdConv(nn.Conv2d):
    """Weight standardization in forward: a quantized plain conv would lose it."""

    def forward(self, x):
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / (
            self.weight.std((1, 2, 3), keepdim=True) + 1e-5
        )
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


class _PlainSub(nn.Linear):
    """A subclass that keeps nn.Linear.forward: quantized like nn.Linear."""


def test_subclasses_that_override_forward_stay_float_with_a_reason():
    torch.manual_seed(0)
    model = nn.Sequential(_StdConv(3, 4, 3), nn.Flatten(), _PlainSub(4 * 6 * 6, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    q = lowbit.quantize(model, "W8A8", calibration=[x])
    assert "overrides Conv2d.forward" in q.lowbit_record.skipped["0"]
    assert type(q[0]) is _StdConv and "2" in q.lowbit_record.layers
    with torch.no_grad():
        assert sqnr(model(x), q(x)) > 25


def test_multihead_attention_out_proj_stays_float():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8))
    model.attn = nn.MultiheadAttention(8, 2, batch_first=True)
    q = lowbit.quantize(model, "W8A16")
    assert "reads this projection's weight directly" in q.lowbit_record.skipped["attn.out_proj"]
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        out, _ = q.attn(x, x, x)
    assert out.shape == (2, 5, 8)


def test_recurrent_and_bilinear_layers_are_listed_as_float():
    model = nn.Sequential()
    model.rnn = nn.LSTM(8, 8, batch_first=True)
    model.gru = nn.GRU(8, 8)
    model.bil = nn.Bilinear(4, 4, 2)
    model.fc = nn.Linear(8, 8)
    q = lowbit.quantize(model, "W8A16")
    skipped = q.lowbit_record.skipped
    assert {"rnn", "gru", "bil"} <= set(skipped)
    assert "LSTM has no quantized implementation" in skipped["rnn"]
    assert "fc" in q.lowbit_record.layers


def test_nan_activations_stop_the_ptq_algorithms_naming_the_layer():
    class Blowup(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 4)

        def forward(self, x):
            return self.b(self.a(x) / 0.0)  # Inf (and NaN at 0/0) from here on

    torch.manual_seed(0)
    calib = [torch.randn(8, 16)]
    for algorithm in ("gptq", "adaround", "awq", "smoothquant", "bias_correction"):
        with pytest.raises(CalibrationError, match="layer 'b'.*NaN|layer 'b'.*Inf"):
            lowbit.quantize(Blowup(), "W4A8" if algorithm != "awq" else "W4A16",
                            calibration=calib, algorithm=algorithm)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64])
def test_calibration_of_the_wrong_dtype_says_how_to_fix_it(dtype):
    model = nn.Sequential(nn.Linear(16, 8))
    with pytest.raises(CalibrationError, match="convert them to the model's dtype"):
        lowbit.quantize(model, "W8A8", calibration=[torch.ones(4, 16, dtype=dtype)])


def test_an_exhausted_generator_is_an_empty_calibration():
    gen = (torch.randn(4, 16) for _ in range(2))
    list(gen)
    with pytest.raises(CalibrationError, match="empty"):
        lowbit.quantize(nn.Sequential(nn.Linear(16, 8)), "W8A8", calibration=gen)
    one_shot = (torch.randn(4, 16) for _ in range(2))  # read once, then reused by GPTQ
    q = lowbit.quantize(nn.Sequential(nn.Linear(16, 8)), "W4A16", calibration=one_shot,
                        algorithm="gptq")  # fmt: skip
    assert "0" in q.lowbit_record.layers


def test_all_zero_calibration_warns_and_gives_a_valid_grid():
    model = nn.Sequential(nn.Linear(16, 8))
    with pytest.warns(UserWarning, match="saw only the value 0"):
        q = lowbit.quantize(model, "W8A8", calibration=[torch.zeros(4, 16)])
    x = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.isfinite(q(x)).all()
    assert float(q[0].input_scale) > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"include": 5}, "include must be a module-name glob"),
        ({"exclude": 5}, "exclude must be a module-name glob"),
        ({"overrides": 5}, "overrides is {pattern: scheme}"),
        ({"include": [1, 2]}, "a pattern is a string glob"),
    ],
)
def test_targeting_arguments_of_the_wrong_type_raise_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        lowbit.quantize(nn.Sequential(nn.Linear(16, 8)), "W8A16", **kwargs)


def test_overrides_may_be_a_list_of_pairs():
    q = lowbit.quantize(nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4)), "W4A16",
                        overrides=[("1", "W8A16"), ("0", None)])  # fmt: skip
    assert list(q.lowbit_record.layers) == ["1"] and "0" in q.lowbit_record.skipped
