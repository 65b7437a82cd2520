"""ONNX Runtime helpers: its own quantizer runs without leaving files in the working directory."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import lowbit

pytest.importorskip("onnxruntime")
from lowbit.export.ort import ort_quantize, ort_session  # noqa: E402


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_ort_quantize_leaves_the_working_directory_alone(tmp_path, monkeypatch, mode):
    """ORT's tooling writes ``*.data``/``sym_shape_infer_temp.onnx`` into the cwd (issue 18)."""
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(8, 16)
    f_path = lowbit.export_onnx(model, tmp_path / "float.onnx", (x,)).path
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    sess, _ = ort_session(f_path)
    name = sess.get_inputs()[0].name
    feeds = [{name: x.numpy()}] if mode == "static" else None
    out = ort_quantize(f_path, tmp_path / f"{mode}.onnx", mode, feeds)
    assert out.is_file() and out.is_absolute()
    assert os.listdir(cwd) == []
    y = ort_session(out)[0].run(None, {name: x.numpy()})[0]
    assert y.shape == (8, 4)


def test_files_the_quantizer_drops_into_the_cwd_land_in_a_temp_dir(tmp_path, monkeypatch):
    """What ORT 1.2x does for large models (a ``<uuid>.data`` beside the process), simulated."""
    import onnxruntime.quantization as ortq

    def dropping_quantizer(src, dst, **kwargs):
        open("bec35af8.data", "wb").close()  # relative: the working directory
        open(dst, "wb").close()

    monkeypatch.setattr(ortq, "quantize_dynamic", dropping_quantizer)
    monkeypatch.chdir(tmp_path)
    out = ort_quantize("float.onnx", "q.onnx", "dynamic")
    assert out == tmp_path / "q.onnx" and out.is_file()
    assert sorted(os.listdir(tmp_path)) == ["q.onnx"]
