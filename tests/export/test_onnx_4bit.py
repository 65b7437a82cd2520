"""4-bit codes in the ONNX file (issue 18 B): a 4-bit export is half the size of the 8-bit one.

Formats whose values have an exact 4-bit form (uniform int <= 4 bits, binary, ternary) are
written with 4-bit codes (``MatMulNBits`` bits=4, uint4 ``DequantizeLinear``); the others keep
8-bit codes and say why in ``OnnxExport.widened_layers``, with a warning.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lowbit
from lowbit.export import export_onnx
from lowbit.export.int4 import pack_uint4
from lowbit.export.nbits import channel_codes, fit_4bit
from lowbit.measure.accuracy import sqnr_db

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from lowbit.export.ort import ort_session  # noqa: E402


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64)).eval()


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1)).eval()  # fmt: skip


def _export(make, scheme, shape, path, **kw):
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(*shape, generator=g) for _ in range(3)]
    q = lowbit.quantize(make(), scheme, calibration=calib)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp = export_onnx(q, path, calib[0], calibration=calib, **kw)
    x = torch.randn(*shape, generator=g)
    sess, ops = ort_session(exp.path)
    out = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        ref = q(x)
    widen_warnings = [w for w in caught if "keep 8-bit codes" in str(w.message)]
    return exp, sqnr_db(ref, out), {op for v in ops.values() for op in v}, widen_warnings


def _n_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d))


@pytest.mark.parametrize("make,shape,four,eight,floor_db", [
    (_mlp, (8, 256), "W4A16-g128", "W8A16", 35),  # weight-only: lowbit's bf16 activations
    (_mlp, (8, 256), "W4A8", "W8A8", 60),  # static: the same integers, float rounding only
    (_cnn, (4, 16, 8, 8), "W4A8", "W8A8", 45),  # + ties of the 2nd conv's input rounding
    (_cnn, (4, 16, 8, 8), "W4A16", "W8A16", 35),
])  # fmt: skip
def test_4bit_export_is_half_the_8bit_one(tmp_path, make, shape, four, eight, floor_db):
    exp4, db, _ops, warned = _export(make, four, shape, tmp_path / "w4.onnx")
    exp8, *_ = _export(make, eight, shape, tmp_path / "w8.onnx")
    n = _n_weights(make())
    saved = exp8.size_bytes - exp4.size_bytes
    # half a byte per weight, less the 4-bit layout's per-block scales and zero points
    assert 0.45 * n < saved <= 0.5 * n + 512, (saved, n)
    assert db > floor_db, db
    assert not exp4.widened_layers and not warned


@pytest.mark.parametrize("scheme", ["BINARY", "TERNARY"])
def test_evenly_spaced_grids_are_written_in_4_bits(tmp_path, scheme):
    """sign(w) * a and {-a, 0, a} are exact on a 4-bit grid (codes 0/2 or 0/1/2, zero 1)."""
    exp, db, ops, warned = _export(_mlp, scheme, (8, 256), tmp_path / "m.onnx")
    assert set(exp.layers.values()) == {"MatMulNBits (4-bit, blocks of 256)"}, exp.layers
    assert db > 35 and "MatMulNBits" in ops and not warned


@pytest.mark.parametrize("scheme,fmt", [("NF4", "nf4"), ("KMEANS16", "kmeans16")])
def test_codebook_formats_are_widened_with_a_note_and_a_warning(tmp_path, scheme, fmt):
    exp, db, _ops, warned = _export(_mlp, scheme, (8, 256), tmp_path / "m.onnx")
    assert set(exp.widened_layers) == {"0", "2"}, exp.widened_layers
    assert all(v.startswith(f"{fmt} codes stored as 8-bit MatMulNBits") and "ONNX has no"
               in v for v in exp.widened_layers.values())  # fmt: skip
    assert len(warned) == 1 and "widened_layers" in str(warned[0].message)
    assert db > 35


def test_int8_kernels_keeps_w4a8_on_the_int8_kernels(tmp_path):
    exp, db, ops, warned = _export(_cnn, "W4A8", (4, 16, 8, 8), tmp_path / "m.onnx",
                                   int8_kernels=True)  # fmt: skip
    assert "QLinearConv" in ops, ops  # the last conv, whose output is the model's, runs float
    assert set(exp.widened_layers) == {"0", "2"} and not warned  # asked for: no warning
    assert all("int8_kernels=True" in v for v in exp.widened_layers.values())
    assert onnx.load(str(exp.path)).opset_import[0].version == 17


def test_4bit_conv_weights_are_the_layers_weights(tmp_path):
    """The uint4 tensors in the file decode to lowbit's dequantized weights exactly."""
    exp, *_ = _export(_cnn, "W4A16", (4, 16, 8, 8), tmp_path / "m.onnx")
    model = onnx.load(str(exp.path))
    assert model.opset_import[0].version == 21
    inits = {i.name: i for i in model.graph.initializer}
    assert inits["0.qcodes"].data_type == onnx.TensorProto.UINT4
    codes = onnx.numpy_helper.to_array(inits["0.qcodes"]).astype(np.int32)
    q = lowbit.quantize(_cnn(), "W4A16", calibration=[torch.randn(4, 16, 8, 8)])
    c = channel_codes(q[0], None)
    assert np.array_equal(codes, c["qcodes"].numpy())
    w = (c["qcodes"].float() - c["w_zero"].float().reshape(-1, 1, 1, 1)) * c["w_scale"].reshape(
        -1, 1, 1, 1
    )
    assert torch.equal(w, q[0].dequantized_weight())


@given(step=st.integers(1, 9), span=st.integers(0, 15), shift=st.integers(0, 15),
       seed=st.integers(0, 2**16))  # fmt: skip
@settings(max_examples=50, deadline=None)
def test_fit_4bit_is_exact_on_any_4bit_lattice(step, span, shift, seed):
    g = torch.Generator().manual_seed(seed)
    lo = -min(shift, span)
    u = torch.randint(lo, lo + span + 1, (3, 32), generator=g)
    q8 = (u * step).clamp(-127, 127)
    fit = fit_4bit(q8, 16)
    assert fit is not None
    back = (fit.codes.reshape(3, 2, 16) - fit.zero.unsqueeze(-1)) * fit.mult.unsqueeze(-1)
    assert torch.equal(back.reshape(3, 32), q8)
    assert int(fit.codes.max()) <= 15 and int(fit.zero.max()) <= 15


def test_fit_4bit_refuses_wider_spans():
    assert fit_4bit(torch.tensor([[0, 1, 16, 0] * 4]), 16) is None  # 17 levels
    assert fit_4bit(torch.tensor([[-8, 1, 8, 0] * 4]), 16) is None
    assert fit_4bit(torch.tensor([[-8, 0, 8, 0] * 4]), 16) is not None  # {-1, 0, 1} x 8


def test_pack_uint4_is_onnx_layout():
    codes = np.arange(16, dtype=np.uint8).reshape(2, 8)
    t = onnx.helper.make_tensor("t", onnx.TensorProto.UINT4, codes.shape,
                                pack_uint4(codes).tobytes(), raw=True)  # fmt: skip
    assert np.array_equal(onnx.numpy_helper.to_array(t).astype(np.uint8), codes)
