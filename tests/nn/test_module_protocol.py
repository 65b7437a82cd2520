"""Quantized models behave like PyTorch modules: deepcopy, pickle, state_dict, .to(...).

Derived kernel data (oneDNN's prepacked conv weight, the int4 pack, fused epilogues) is rebuilt
from the stored tensors, never carried; moves off the CPU are refused; dtype conversions leave
the stored codes and qparams as they are (activations are cast at the layer's edges).
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import UnsupportedDeviceError
from lowbit.nn import QuantModule, layer_class

# int8 GEMM + oneDNN conv, int4 pack, static 4-bit weights, codebooks, and a cast preset
PRESETS = ["W8A8", "W8A8-dynamic", "W4A16", "W4A16-g128", "W4A8", "NF4", "BF16"]


class ConvMLP(nn.Module):
    """A conv and two Linears whose weight rows (128) fit every group size and the int4 kernel."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(32, 32, 2, stride=2)  # row length 32 * 2 * 2 = 128
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(128, 128)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(128, 16)

    def forward(self, x):
        x = torch.flatten(self.pool(self.conv(x)), 1)
        return self.fc2(self.relu(self.fc1(x)))


def quantized(preset: str, seed: int = 0) -> nn.Module:
    """ConvMLP (weights and calibration from ``seed``) quantized with ``preset``."""
    torch.manual_seed(seed)
    model = ConvMLP().eval()
    calibration = [torch.randn(4, 32, 8, 8) for _ in range(2)]
    return lowbit.quantize(model, preset, calibration=calibration)


def inputs() -> torch.Tensor:
    torch.manual_seed(100)
    return torch.randn(3, 32, 8, 8)


def kernels(model: nn.Module) -> dict[str, str]:
    return {n: m.kernel for n, m in model.named_modules() if isinstance(m, QuantModule)}


def stored(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("preset", PRESETS)
def test_deepcopy_is_exact_and_independent(preset: str) -> None:
    q, x = quantized(preset), inputs()
    y, before = q(x), stored(q)
    c = copy.deepcopy(q)
    assert torch.equal(c(x), y)
    assert kernels(c) == kernels(q)  # the copy runs on the same fast kernels
    ptrs = {t.data_ptr() for t in q.state_dict().values()}
    assert not ptrs & {t.data_ptr() for t in c.state_dict().values()}
    with torch.no_grad():
        for t in c.state_dict().values():
            t.zero_()
    assert torch.equal(q(x), y)
    assert_same_tensors(stored(q), before)


@pytest.mark.parametrize("preset", PRESETS)
def test_torch_save_of_the_module_round_trips(preset: str) -> None:
    q, x = quantized(preset), inputs()
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    assert torch.equal(back(x), q(x))
    assert kernels(back) == kernels(q)
    assert back.lowbit_record.layers == q.lowbit_record.layers


@pytest.mark.parametrize("preset", PRESETS)
def test_state_dict_loads_into_another_quantized_copy(preset: str) -> None:
    source, other, x = quantized(preset, seed=0), quantized(preset, seed=1), inputs()
    assert not torch.equal(other(x), source(x))
    other.load_state_dict(source.state_dict())
    assert torch.equal(other(x), source(x))
    assert kernels(other) == kernels(source)


@pytest.mark.parametrize("preset", PRESETS)
def test_cpu_and_float32_conversions_keep_outputs(preset: str) -> None:
    q, x = quantized(preset), inputs()
    y, before = q(x), stored(q)
    for convert in (lambda m: m.to("cpu"), nn.Module.cpu, nn.Module.float,
                    lambda m: m.to(torch.float32), nn.Module.share_memory):  # fmt: skip
        assert convert(q) is q
        assert torch.equal(q(x), y)
    assert_same_tensors(stored(q), before)
    q.to(memory_format=torch.channels_last)  # replaces the conv's codes: kernels are rebuilt
    assert torch.equal(q(x), y)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("preset", PRESETS)
def test_half_precision_keeps_codes_and_casts_activations(preset: str, dtype) -> None:
    q, x = quantized(preset), inputs()
    y, before = q(x), stored(q)
    q.to(dtype)
    assert_same_tensors(stored(q), before)  # integer codes and qparams untouched
    assert torch.equal(q(x), y)  # float32 inputs: exactly the float32 model
    y16 = q(x.to(dtype))
    assert y16.dtype == dtype
    assert float((y16.float() - y).norm() / y.norm()) < 0.03  # only the inputs were rounded


@pytest.mark.parametrize("convert", [nn.Module.half, nn.Module.bfloat16, nn.Module.double,
                                     lambda m: m.type(torch.float16)])  # fmt: skip
def test_every_dtype_conversion_leaves_stored_tensors(convert) -> None:
    q, x = quantized("W4A16"), inputs()
    y, before = q(x), stored(q)
    convert(q)
    assert_same_tensors(stored(q), before)
    assert torch.equal(q(x), y)


def test_lowbit_save_after_half_round_trips(tmp_path) -> None:
    q, x = quantized("W4A8"), inputs()
    y = q(x)
    path = lowbit.save(q.half(), tmp_path / "model")
    back = lowbit.load(path, ConvMLP())
    assert torch.equal(back(x), y)


@pytest.mark.parametrize("move", [lambda m: m.to("meta"), lambda m: m.to_empty(device="meta"),
                                  lambda m: m.to(device="meta", dtype=torch.float16)])  # fmt: skip
def test_moves_off_the_cpu_are_refused(move) -> None:
    q, x = quantized("W8A8"), inputs()
    y = q(x)
    with pytest.raises(UnsupportedDeviceError, match=r"QuantConv \(W8A8\).*'meta'.*CPU only"):
        move(q)
    assert torch.equal(q(x), y)  # refused before any tensor moved


def test_quantize_refuses_a_model_off_the_cpu() -> None:
    model = ConvMLP().to("meta")
    with pytest.raises(UnsupportedDeviceError, match=r"'conv.weight' is on device 'meta'.*cpu\(\)"):
        lowbit.quantize(model, "W8A8-dynamic")


class EmbedNorm(nn.Module):
    """Embedding, then a float LayerNorm that needs its input in the model's dtype."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(64, 128)
        self.norm = nn.LayerNorm(128)
        self.fc = nn.Linear(128, 16)

    def forward(self, ids):
        return self.fc(self.norm(self.emb(ids)))


@pytest.mark.parametrize("preset", ["W8A8-dynamic", "NF4", "BF16"])
def test_embedding_models_copy_and_follow_half(preset: str) -> None:
    torch.manual_seed(0)
    q = lowbit.quantize(EmbedNorm().eval(), preset, exclude=["norm"])  # the norm needs grad
    ids = torch.randint(0, 64, (2, 5))
    y = q(ids)
    assert torch.equal(copy.deepcopy(q)(ids), y)
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(ids), y)
    y16 = q.half()(ids)  # the LayerNorm is fp16 now: the lookup must come out in fp16
    assert y16.dtype == torch.float16
    assert float((y16.float() - y).norm() / y.norm()) < 0.03


FLOAT_LAYERS = {
    "linear": lambda: nn.Linear(128, 32),
    "conv": lambda: nn.Conv2d(32, 32, 2),
    "embedding": lambda: nn.Embedding(64, 128),
}


@pytest.mark.parametrize("preset", ["W8A8-dynamic", "W4A16", "W4A16-g128", "NF4", "BF16"])
@pytest.mark.parametrize("kind", sorted(FLOAT_LAYERS))
def test_derived_attributes_are_declared(kind: str, preset: str) -> None:
    """Every private attribute a layer sets beyond nn.Module's own is listed in ``_derived``
    (an unlisted one would be deep-copied and pickled: opaque tensors break both)."""
    float_layer, scheme = FLOAT_LAYERS[kind](), lowbit.get_preset(preset)
    layer = layer_class(float_layer, scheme).from_float(float_layer, scheme)
    private = {k for k in vars(layer) if k.startswith("_")} - set(vars(nn.Module()))
    assert private <= set(layer._derived), private - set(layer._derived)


@pytest.mark.parametrize("preset", [*PRESETS, "W8A16", "W4A8-dynamic"])
@pytest.mark.parametrize("rows", [3, 200])  # weight-only Linear: int kernels, then dequant+bf16
def test_an_input_that_requires_grad_runs_like_any_other(preset: str, rows: int) -> None:
    """W8A8-dynamic crashed (``mul(out=)`` under autograd) and W4A16/W8A16 at few rows raised
    "derivative not implemented", while other paths gave gradients: integer-code layers are
    inference-only on every path now, and give the same numbers as without autograd."""
    q = quantized(preset)
    torch.manual_seed(1)
    x = torch.randn(rows, 32, 8, 8)
    y = q(x.clone().requires_grad_())
    assert torch.equal(y.detach(), q(x))
    assert y.requires_grad == (preset == "BF16")  # a cast layer computes in float
