"""lowbit.bench: float and quantized timed in one run, slow variants warned about by name."""

from __future__ import annotations

import importlib
import json
import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit.deploy import BenchResult, SlowdownWarning, bench
from lowbit.deploy.bench import _warn_slow, cell, slowdown_message
from lowbit.errors import ConfigError
from lowbit.kernels import cpu
from lowbit.measure.latency import LatencyResult

pytest.importorskip("onnxruntime")


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


def test_rows_cover_every_variant_runtime_and_batch():
    x = torch.randn(16, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlowdownWarning)
        res = bench(_mlp(), x, schemes=("W8A8", "W4A16-g128"), min_time_s=0.01)
    keys = {(r["variant"], r["runtime"], r["batch"]) for r in res.rows}
    assert keys == {(v, rt, b) for v in ("float32", "W8A8", "W4A16-g128")
                    for rt in ("torch", "onnxruntime") for b in (1, 16)}  # fmt: skip
    for r in res.rows:  # each ratio comes from the same run's float row
        base = next(f for f in res.rows if f["variant"] == "float32" and f["runtime"] ==
                    r["runtime"] and f["batch"] == r["batch"])  # fmt: skip
        assert r["speedup"] == pytest.approx(base["ms"] / r["ms"], rel=0.01)
    assert "speed-up" in res.to_markdown()


def test_slow_variant_warning_names_float_layers():
    res = BenchResult(rows=[{"variant": "float32", "runtime": "torch", "batch": 1, "ms": 1.0,
                             "speedup": 1.0},
                            {"variant": "W8A8", "runtime": "torch", "batch": 1, "ms": 2.0,
                             "speedup": 0.5}],
                      float_layers={cell("W8A8", "torch", 1): {"features.0": "left float: why"}})  # fmt: skip
    with pytest.warns(SlowdownWarning, match=r"W8A8 in torch at batch 1 .*0\.50x.*features\.0"):
        _warn_slow(res)


def test_group_scheme_reports_layers_left_float():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bench(model, torch.randn(4, 64), schemes=("W4A16-g128",), onnx=False,
                    min_time_s=0.01, warn=False)  # fmt: skip
    for b in (1, 4):  # 64, 48 not groups of 128
        assert set(res.float_layers[cell("W4A16-g128", "torch", b)]) == {"0", "2"}


def _slower_than_float(fns, min_time_s):
    """compare_latency stand-in: every quantized variant 2x slower than float, no clock read."""
    return {n: LatencyResult(1.0 if n == "float32" else 2.0, 1.0, 2.0, 1) for n in fns}


def test_float_compute_layers_are_named_per_batch_with_their_kernel(monkeypatch):
    torch.manual_seed(0)
    # 0: int4 kernel; 2: out_features 40, int8 weight-pack kernel; 4: in_features 40, reference
    model = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 40), nn.ReLU(),
                          nn.Linear(40, 10)).eval()  # fmt: skip
    rows = cpu.WEIGHT_ONLY_DEQUANT_MIN_ROWS
    bench_module = importlib.import_module("lowbit.deploy.bench")  # the attribute is bench()
    monkeypatch.setattr(bench_module, "compare_latency", _slower_than_float)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = bench(model, torch.randn(rows, 256), schemes=("W4A16",), onnx=False)
    one, many = (res.float_layers[cell("W4A16", "torch", b)] for b in (1, rows))
    assert one == {"4": "reference fp32 matmul at 1 row"}
    dequant = f"dequant+{'bf16' if cpu.dequant_dtype() is torch.bfloat16 else 'fp32'} matmul"
    assert many == {"0": f"{dequant} at {rows} rows", "2": f"{dequant} at {rows} rows",
                    "4": f"reference fp32 matmul at {rows} rows"}  # fmt: skip
    assert res.kernels[cell("W4A16", "torch", 1)].startswith("1 int4 _weight_int4pack_mm, ")
    slow = [str(w.message) for w in caught if issubclass(w.category, SlowdownWarning)]
    at_many = next(m for m in slow if f"at batch {rows} " in m)
    assert f"0 ({dequant} at {rows} rows)" in at_many and "Layers computing in float there" in at_many
    assert "Every quantized layer ran on an integer kernel" not in at_many
    table = res.to_markdown()
    assert "| kernels" in table and f"2 {dequant} ({rows} rows)" in table


def test_slowdown_message_without_float_layers_names_the_kernels():
    row = {"variant": "W8A8", "runtime": "torch", "batch": 1, "speedup": 0.9}
    msg = slowdown_message(row, {}, "2 int8 _int_mm")
    assert "integer kernel there (2 int8 _int_mm)" in msg


def test_bad_example_inputs():
    with pytest.raises(ConfigError, match="example_inputs"):
        bench(_mlp(), [], schemes=())


def test_cli_bench_writes_json(tmp_path, capsys):
    import numpy as np

    from lowbit.cli import main

    model_file = tmp_path / "m.py"
    model_file.write_text(
        "import torch\nfrom torch import nn\n"
        "def make():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))\n"
    )
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((16, 32), np.float32))
    out = tmp_path / "bench.json"
    rc = main(["bench", f"{model_file}:make", "--calib", str(tmp_path / "x.npy"), "--schemes",
               "W8A8", "--batch-size", "8", "--min-time", "0.01", "--json", str(out)])  # fmt: skip
    assert rc == 0
    data = json.loads(out.read_text())
    assert {r["variant"] for r in data["rows"]} == {"float32", "W8A8"}
    assert data["kernels"][cell("W8A8", "torch", 8)]  # e.g. "2 int8 _int_mm"
    assert "| variant" in capsys.readouterr().out
    assert lowbit.bench is bench


def test_compiled_backends_are_timed_beside_eager_against_float_eager(monkeypatch, tmp_path):
    from lowbit.runtime import onnx_backends as ox

    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(ox.importlib.util, "find_spec",
                        lambda name, *a: None if name == "openvino" else real(name, *a))  # fmt: skip
    x = torch.randn(8, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlowdownWarning)
        res = bench(_mlp(), x, schemes=("W8A8",), onnx=False, min_time_s=0.01,
                    compile_backends=("onnxruntime", "openvino"))  # fmt: skip
    keys = {(r["variant"], r["runtime"], r["batch"]) for r in res.rows}
    assert keys == {("float32", "torch", 1), ("float32", "torch", 8), ("W8A8", "torch", 1),
                    ("W8A8", "torch", 8), ("W8A8", "compiled:onnxruntime", 1),
                    ("W8A8", "compiled:onnxruntime", 8)}  # fmt: skip
    for r in res.rows:  # compiled rows: ratio to float32 eager PyTorch of the same run
        base = next(f for f in res.rows if f["variant"] == "float32" and f["batch"] == r["batch"])
        assert r["speedup"] == pytest.approx(base["ms"] / r["ms"], rel=0.01)
    assert "onnxruntime" in res.kernels[cell("W8A8", "compiled:onnxruntime", 1)]
    assert any("openvino" in n and "pip install openvino" in n for n in res.notes), res.notes
    assert "pip install openvino" in res.to_markdown()
