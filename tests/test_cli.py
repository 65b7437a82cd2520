"""The command line: quantize from a factory + weights + calibration file, info, errors."""

from __future__ import annotations

import textwrap

import pytest
import torch
from safetensors.torch import save_file

import lowbit
from lowbit.cli import load_factory, main


@pytest.fixture()
def project(tmp_path):
    (tmp_path / "net.py").write_text(
        textwrap.dedent("""
        from torch import nn
        def make():
            return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    """)
    )
    torch.manual_seed(0)
    model = load_factory(f"{tmp_path / 'net.py'}:make")()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    save_file({"x": torch.randn(100, 32)}, str(tmp_path / "calib.safetensors"))
    return tmp_path, model


@pytest.mark.parametrize("weights", ["w.safetensors", "w.pt"])
def test_quantize_command_writes_a_loadable_artifact(project, weights, capsys):
    root, model = project
    out = root / "out"
    rc = main([
        "quantize", f"{root / 'net.py'}:make", "--weights", str(root / weights),
        "--calib", str(root / "calib.safetensors"), "--scheme", "W8A8", "--out", str(out),
    ])  # fmt: skip
    assert rc == 0
    assert "2 layers quantized" in capsys.readouterr().out
    loaded = lowbit.load(out, load_factory(f"{root / 'net.py'}:make")())
    x = torch.randn(8, 32)
    sqnr = 10 * torch.log10(model(x).pow(2).sum() / (model(x) - loaded(x)).pow(2).sum())
    assert sqnr > 25
    assert main(["info", str(out)]) == 0
    assert "QuantLinear W8A8" in capsys.readouterr().out


def test_quantize_command_runs_ptq_algorithms(project, capsys):
    root, _model = project
    out = root / "gptq"
    rc = main([
        "quantize", f"{root / 'net.py'}:make", "--weights", str(root / "w.safetensors"),
        "--calib", str(root / "calib.safetensors"), "--scheme", "W4A16",
        "--algorithm", "awq", "gptq", "--out", str(out),
    ])  # fmt: skip
    assert rc == 0
    loaded = lowbit.load(out, load_factory(f"{root / 'net.py'}:make")())
    assert loaded.lowbit_record.ptq["algorithms"] == ["awq", "gptq"]
    assert set(loaded.lowbit_record.ptq["layers"]) == {"0", "2"}


def test_quantize_command_reports_bad_input_clearly(project, capsys):
    root, _ = project
    rc = main(["quantize", f"{root / 'net.py'}:make", "--scheme", "W8A9", "--out", str(root / "o")])
    assert rc == 2
    assert "Did you mean 'W8A8'" in capsys.readouterr().err
    rc = main(["quantize", f"{root / 'net.py'}:nothing", "--out", str(root / "o")])
    assert rc == 2 and "no callable 'nothing'" in capsys.readouterr().err
    rc = main(["quantize", "no_colon_here", "--out", str(root / "o")])
    assert rc == 2 and "package.module:factory" in capsys.readouterr().err
    rc = main(["quantize", f"{root / 'net.py'}:make", "--scheme", "W8A8", "--out", str(root / "o")])
    assert rc == 2 and "calibration" in capsys.readouterr().err


def test_presets_command_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in lowbit.preset_names():
        assert name in out


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_info_on_a_broken_artifact_is_a_clear_error(tmp_path, capsys, content):
    (tmp_path / "lowbit.json").write_text(content)
    assert main(["info", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "lowbit.json" in err and "Traceback" not in err
