"""lowbit.export_onnx: files ONNX Runtime runs on integer kernels, matching lowbit's own model."""

from __future__ import annotations

import collections
import os
import warnings
from contextlib import nullcontext

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lowbit
from lowbit.errors import ConfigError
from lowbit.export import ExportError, export_onnx
from lowbit.export.onnx_ops import pack_codes, unpack_codes
from lowbit.measure.accuracy import sqnr_db
from lowbit.nn import QuantModule

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from lowbit.export.ort import float_layers, ort_optimized, ort_session  # noqa: E402


class ResidualCNN(nn.Module):
    """conv-BN-ReLU, a residual block (conv-ReLU-conv + identity, ReLU), max-pool, MLP head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.c1 = nn.Conv2d(16, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 64), nn.ReLU(),
                                  nn.Linear(64, 10))  # fmt: skip

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.c2(torch.relu(self.c1(x))))
        return self.head(self.pool(x))


class ResNetLike(nn.Module):
    """ResNet's stem and first blocks: max-pool feeding a conv *and* the residual add, a
    strided block with a 1x1 downsample reading the same tensor as its first conv, then global
    average pooling and a linear classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.a1, self.a2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.b1 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.b2, self.down = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(8, 16, 1, stride=2)
        self.gap, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = torch.relu(x + self.a2(torch.relu(self.a1(x))))
        x = torch.relu(self.down(x) + self.b2(torch.relu(self.b1(x))))
        return self.fc(torch.flatten(self.gap(x), 1))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(256, 256), nn.Linear(256, 32)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _batches(shape, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def _run(path, x):
    sess, ops = ort_session(path)
    return torch.from_numpy(sess.run(None, {"input": x.numpy()})[0]), ops


def _export(model, tmp_path, scheme, calib, name="m.onnx"):
    torch.manual_seed(0)
    q = lowbit.quantize(model.eval(), scheme, calibration=calib)
    exp = export_onnx(q, tmp_path / name, calib[0], calibration=calib)
    return q, exp


def test_static_cnn_runs_on_integer_kernels_and_matches_lowbit(tmp_path):
    torch.manual_seed(0)
    calib = _batches((16, 3, 8, 8))
    q, exp = _export(ResidualCNN(), tmp_path, "W8A8", calib)
    x = _batches((32, 3, 8, 8), n=1, seed=5)[0]
    out, ops = _run(exp.path, x)
    with torch.no_grad():
        ref = q(x)
    # 35.1 dB measured: one extra rounding per requantized conv output (re-measure when the
    # export's output quantization changes); a 1.1x weight scale gives 9.5, a 1.1x input scale 32.8
    assert sqnr_db(ref, out) > 33
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    kinds = collections.Counter(op for v in ops.values() for op in v)
    assert kinds["QLinearConv"] == 3, ops  # every conv, the residual block's included
    convs = [n for n in exp.layers if not n.startswith("head")]
    assert not float_layers(ops, convs), float_layers(ops, convs)
    assert exp.requantized, "conv outputs before the residual add must be quantized"
    assert all(v.startswith("QDQ") for v in exp.layers.values())


@pytest.mark.parametrize("quantize_outputs", [False, True])
def test_resnet_like_graph_stays_on_integer_codes_end_to_end(tmp_path, quantize_outputs):
    """One grid per tensor: ONNX Runtime removes every dequantize/quantize pair between layers,
    so only the input's QuantizeLinear remains, and the logits' DequantizeLinear where they are
    quantized (``quantize_outputs``); otherwise ``QGemm`` writes float logits and their bias is
    added after it."""
    torch.manual_seed(0)
    calib = _batches((16, 3, 16, 16))
    q = lowbit.quantize(ResNetLike().eval(), "W8A8", calibration=calib)
    exp = export_onnx(q, tmp_path / "m.onnx", calib[0], calibration=calib,
                      quantize_outputs=quantize_outputs)  # fmt: skip
    x = _batches((32, 3, 16, 16), n=1, seed=5)[0]
    out, ops = _run(exp.path, x)
    with torch.no_grad():
        ref = q(x)
    # 47.0 dB measured (re-measure when the export's output quantization changes); a 1.1x
    # weight scale gives 25.0, a 2x coarser requantization grid for the conv outputs 41.7
    assert sqnr_db(ref, out) > 44
    kinds = collections.Counter(op for v in ops.values() for op in v)
    assert kinds["QLinearConv"] == 6 and kinds["QGemm"] == 1, ops
    sess_graph = _optimized_ops(exp.path)
    assert sess_graph["QuantizeLinear"] == 1, sess_graph
    assert sess_graph["DequantizeLinear"] == int(quantize_outputs), sess_graph
    assert sess_graph["Add"] == int(not quantize_outputs), sess_graph  # the float logits' bias
    assert sess_graph["QLinearAdd"] == 2 and sess_graph["QLinearGlobalAveragePool"] == 1
    assert not {"Conv", "Gemm", "MatMul"} & set(sess_graph), sess_graph


def _optimized_ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in ort_optimized(path)[1].graph.node)


def test_dynamic_linear_runs_on_uint8_codes(tmp_path):
    """ONNX Runtime's int8 x int8 MatMulInteger is a slow path on x86: codes go in as uint8."""
    calib = _batches((8, 256))
    _q, exp = _export(MLP(), tmp_path, "W8A8-dynamic", calib)
    model = onnx.load(str(exp.path))
    types = {
        t.name: t.type.tensor_type.elem_type
        for t in onnx.shape_inference.infer_shapes(model).graph.value_info
    }
    mm = [n for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert len(mm) == 2
    assert all(types.get(n.input[0]) == onnx.TensorProto.UINT8 for n in mm), types


def test_model_is_restored_after_export(tmp_path):
    calib = _batches((8, 3, 8, 8))
    q, _ = _export(ResidualCNN(), tmp_path, "W8A8", calib)
    assert isinstance(q.c1, QuantModule) and isinstance(q.head[1], QuantModule)
    with torch.no_grad():
        assert q(calib[0]).shape == (8, 10)


def test_dynamic_linear_is_exact_lowbit_arithmetic(tmp_path):
    calib = _batches((8, 256))
    q, exp = _export(MLP(), tmp_path, "W8A8-dynamic", calib)
    x = _batches((16, 256), n=1, seed=3)[0]
    out, ops = _run(exp.path, x)
    with torch.no_grad():
        ref = q(x)
    assert sqnr_db(ref, out) > 60  # same codes, same scales: float rounding only
    assert {"MatMulInteger"} <= {op for v in ops.values() for op in v}
    assert all(v.startswith("MatMulInteger (dynamic per-token") for v in exp.layers.values())


@pytest.mark.parametrize("scheme,bits", [("W4A16-g128", 4), ("W4A16", 4), ("W8A16", 8),
                                         ("NF4", 8)])  # fmt: skip
def test_weight_only_linear_uses_matmulnbits(tmp_path, scheme, bits):
    calib = _batches((8, 256))
    widened = scheme == "NF4"  # no 4-bit form: 8-bit codes, named with a warning
    with pytest.warns(UserWarning, match="keep 8-bit codes") if widened else nullcontext():
        q, exp = _export(MLP(), tmp_path, scheme, calib)
    assert set(exp.widened_layers) == ({"fc1", "fc2"} if widened else set())
    x = _batches((16, 256), n=1, seed=3)[0]
    out, ops = _run(exp.path, x)
    with torch.no_grad():
        ref = q(x)
    assert sqnr_db(ref, out) > 35  # lowbit rounds activations to bf16; ONNX keeps fp32
    assert all(v.startswith(f"MatMulNBits ({bits}-bit") for v in exp.layers.values())
    assert {"MatMulNBits"} <= {op for v in ops.values() for op in v}


def test_int8_file_is_about_four_times_smaller(tmp_path):
    calib = _batches((8, 256))
    float_path = export_onnx(MLP().eval(), tmp_path / "f.onnx", calib[0]).path
    _, exp = _export(MLP(), tmp_path, "W8A8", calib)
    _, exp4 = _export(MLP(), tmp_path, "W4A16-g128", calib, name="m4.onnx")
    ratio = float_path.stat().st_size / exp.size_bytes
    assert 3.5 < ratio < 4.1, ratio
    assert float_path.stat().st_size / exp4.size_bytes > 6.5


def test_dynamic_conv_exports_convinteger(tmp_path):
    calib = _batches((8, 3, 8, 8))
    q, exp = _export(ResidualCNN(), tmp_path, "W8A8-dynamic", calib)
    out, ops = _run(exp.path, calib[1])
    with torch.no_grad():
        assert sqnr_db(q(calib[1]), out) > 35
    assert "ConvInteger" in {op for v in ops.values() for op in v}


def test_float_layers_are_named_with_a_reason(tmp_path):
    calib = _batches((8, 3, 8, 8))
    _, exp = _export(ResidualCNN(), tmp_path, "FP16", calib)
    assert exp.float_layers and all("float32" in v for v in exp.float_layers.values())


@given(bits=st.sampled_from([4, 8]), rows=st.integers(1, 4), cols=st.integers(1, 33),
       seed=st.integers(0, 2**16))  # fmt: skip
@settings(max_examples=40, deadline=None)
def test_pack_codes_round_trip(bits, rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (rows, cols), generator=g)
    back = unpack_codes(pack_codes(codes, bits), bits)[:, :cols]
    assert torch.equal(back, codes.to(torch.int32))


def test_bad_inputs_give_clear_errors(tmp_path):
    model = MLP().eval()
    with pytest.raises(ConfigError, match=r"\.onnx"):
        export_onnx(model, tmp_path / "m.bin", torch.randn(2, 256))
    with pytest.raises(ConfigError, match="example_inputs"):
        export_onnx(model, tmp_path / "m.onnx", [])
    with pytest.raises(ConfigError, match="calibration is empty"), warnings.catch_warnings():
        q = lowbit.quantize(ResidualCNN().eval(), "W8A8", calibration=_batches((4, 3, 8, 8)))
        export_onnx(q, tmp_path / "c.onnx", torch.randn(2, 3, 8, 8), calibration=[])


def test_failed_export_leaves_previous_file_intact(tmp_path):
    path = tmp_path / "m.onnx"
    export_onnx(MLP().eval(), path, torch.randn(2, 256))
    before = path.read_bytes()
    with pytest.raises(ExportError, match="torch.onnx.export failed"):
        export_onnx(MLP().eval(), path, torch.randn(2, 7))  # wrong width: forward fails
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary left behind
    assert os.path.getsize(path) > 0
