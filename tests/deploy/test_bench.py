"""lowbit.bench: float and quantized timed in one run, slow variants warned about by name."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit.deploy import BenchResult, SlowdownWarning, bench
from lowbit.deploy.bench import _warn_slow
from lowbit.errors import ConfigError

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
                      float_layers={"W8A8 / torch": {"features.0": "left float: reason"}})  # fmt: skip
    with pytest.warns(SlowdownWarning, match=r"W8A8 in torch at batch 1 .*0\.50x.*features\.0"):
        _warn_slow(res)


def test_group_scheme_reports_layers_left_float():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bench(model, torch.randn(4, 64), schemes=("W4A16-g128",), onnx=False,
                    min_time_s=0.01, warn=False)  # fmt: skip
    assert set(res.float_layers["W4A16-g128 / torch"]) == {"0", "2"}  # 64, 48 not groups of 128


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
    assert "| variant" in capsys.readouterr().out
    assert lowbit.bench is bench
