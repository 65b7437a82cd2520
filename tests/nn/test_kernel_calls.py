"""Each quantized layer reports the kernel its forward really ran, and whether it computed on ints."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit.kernels import cpu
from lowbit.nn import QuantLinear
from lowbit.nn.kernel_calls import KernelPath, record_kernels


def _quantize(model: nn.Module, preset: str) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the loud fallbacks are tested below
        return lowbit.quantize(model, preset, calibration=[torch.randn(8, 256)])


def _calls(model: nn.Module, x: torch.Tensor) -> dict[str, dict[int, KernelPath]]:
    with torch.inference_mode(), record_kernels(model) as calls:
        model(x)
    return calls.layers


@pytest.mark.parametrize(("preset", "kernel"), [("W4A16-g128", "int4 _weight_int4pack_mm"),
                                                ("W8A16", "int8 _weight_int8pack_mm")])  # fmt: skip
def test_weight_only_linear_switches_to_dequant_float_at_many_rows(preset, kernel):
    torch.manual_seed(0)
    q = _quantize(nn.Sequential(nn.Linear(256, 64)), preset)
    rows = cpu.WEIGHT_ONLY_DEQUANT_MIN_ROWS
    one, many = _calls(q, torch.randn(1, 256))["0"][1], _calls(q, torch.randn(rows, 256))["0"][rows]
    assert one == KernelPath(kernel, "int")
    assert many.compute == "float" and many.name == f"dequant+{_dt()} matmul"
    assert q[0].last_call == (many, rows)


def test_weight_only_conv_dequantizes_into_a_float_conv():
    torch.manual_seed(0)
    q = lowbit.quantize(nn.Sequential(nn.Conv2d(3, 8, 3)), "W8A16")
    path = _calls(q, torch.randn(2, 3, 6, 6))["0"][2 * 6 * 6]  # rows: batch x input positions
    assert path == KernelPath(f"dequant+{_dt()} conv", "float")


def test_head_with_in_features_not_a_multiple_of_16_reports_its_fallback():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 40), nn.ReLU(), nn.Linear(40, 10))
    q = _quantize(model, "W4A16")
    layers = _calls(q, torch.randn(3, 256))
    assert layers["0"][3].compute == "int"  # out_features 40: int8 expansion, weight-pack kernel
    assert layers["2"][3] == KernelPath("reference fp32 matmul", "float")
    with pytest.warns(RuntimeWarning, match="multiple of 16"):
        QuantLinear.from_float(model[2], lowbit.get_preset("W8A16"))


def test_integer_activation_schemes_run_int8_kernels():
    torch.manual_seed(0)
    q = _quantize(nn.Sequential(nn.Linear(256, 64)), "W8A8")
    want = "int8 _int_mm" if cpu.has_vnni() else "int8 codes on fp32 GEMM (no VNNI)"
    assert _calls(q, torch.randn(200, 256))["0"][200].name == want


def test_summary_and_float_layers_of_one_run():
    torch.manual_seed(0)
    q = _quantize(nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 32)), "W8A16")
    with torch.inference_mode(), record_kernels(q) as calls:
        q(torch.randn(160, 256))
        q(torch.randn(1, 256))
    assert calls.summary() == f"2 int8 _weight_int8pack_mm, 2 dequant+{_dt()} matmul (160 rows)"
    assert calls.float_layers() == {n: f"dequant+{_dt()} matmul at 160 rows" for n in ("0", "2")}
    q(torch.randn(1, 256))  # hooks are gone after the block
    assert set(calls.layers["0"]) == {1, 160}


def test_cast_and_embedding_paths():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 16))
    ids = torch.tensor([[1, 2, 3]])
    q8 = lowbit.quantize(model, "W8A8-dynamic")
    assert _calls(q8, ids)["0"][3] == KernelPath("int gather + row scale", "int")
    bf16 = lowbit.quantize(model, "BF16")
    assert all(p.compute == "float" for calls in _calls(bf16, ids).values() for p in calls.values())


def _dt() -> str:
    return "bf16" if cpu.dequant_dtype() is torch.bfloat16 else "fp32"
