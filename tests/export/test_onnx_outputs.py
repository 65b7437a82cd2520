"""Model outputs of lowbit.export_onnx stay float (issue 18 A): no calibrated clamp on them.

A grid calibrated on sample inputs clamps a regression head, an embedding or any input beyond
the calibration range; lowbit's PyTorch model has no such clamp, so neither may the export.
"""

from __future__ import annotations

import collections

import pytest
import torch
from torch import nn

import lowbit
from lowbit.export import export_onnx

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from lowbit.export.ort import ort_optimized, ort_session  # noqa: E402


class Regressor(nn.Module):
    """An MLP with a scalar regression head (a 2-D ``Gemm`` writes the model output)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class ConvFeatures(nn.Module):
    """Conv features as the output: the last conv reaches it through ReLU, max-pool, flatten."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return torch.flatten(nn.functional.max_pool2d(x, 2), 1)


class ConvPooled(nn.Module):
    """Globally average-pooled conv features as the output (a pool of a quantized tensor)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class ConcatConvs(nn.Module):
    """Two convs concatenated as the output: ``Concat`` is no data-movement op the old walk
    back from the outputs knew, so both convs got calibrated output grids (found in review)."""

    output_layers = ("a", "b")

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.flatten(torch.cat([self.a(x), self.b(x)], 1), 1)


def _quantized(make, shape: tuple[int, ...]):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(*shape, generator=g) for _ in range(4)]
    return lowbit.quantize(make().eval(), "W8A8", calibration=calib), calib


def _one_step_bound(q: nn.Module) -> float:
    """The output change if every input of the last static layer moved one step of its grid:
    ``s_x * max_o sum_i |W[o, i]|``. Rounding ties decided differently by ONNX Runtime's
    integer requantization move an input by one step; nothing else may differ."""
    names = getattr(q, "output_layers", None)  # the layers that write the output, else the last
    layers = [q.get_submodule(n) for n in names] if names else \
        [[m for m in q.modules() if hasattr(m, "input_scale")][-1]]  # fmt: skip
    return max(float(m.input_scale * m.dequantized_weight().abs().reshape(
        m.out_channels if hasattr(m, "out_channels") else m.out_features, -1).sum(1).max())
        for m in layers)  # fmt: skip


@pytest.mark.parametrize("make,shape", [(Regressor, (16, 32)), (ConvFeatures, (8, 3, 8, 8)),
                                        (ConvPooled, (8, 3, 8, 8)),
                                        (ConcatConvs, (8, 3, 8, 8))])  # fmt: skip
def test_outputs_beyond_the_calibration_range_are_not_clamped(tmp_path, make, shape):
    q, calib = _quantized(make, shape)
    exp = export_onnx(q, tmp_path / "m.onnx", calib[0], calibration=calib)
    x = 3 * torch.randn(4 * shape[0], *shape[1:], generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = q(x)
        seen = torch.cat([q(c).flatten() for c in calib])
    bound = _one_step_bound(q)
    # the outputs leave the calibrated range by more than the bound: a clamp there would fail
    overshoot = max(float(ref.max() - seen.max()), float(seen.min() - ref.min()))
    assert overshoot > 2 * bound, (overshoot, bound)
    sess, _ops = ort_session(exp.path)
    out = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    err = float((out - ref).abs().max())
    assert err <= bound, (err, bound)


def _optimized_ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in ort_optimized(path)[1].graph.node)


def test_float_output_head_still_runs_as_qgemm(tmp_path):
    """The float-output head keeps its integer kernel (``QGemm``, bias added after it)."""
    q, calib = _quantized(Regressor, (16, 32))
    exp = export_onnx(q, tmp_path / "m.onnx", calib[0], calibration=calib)
    ops = _optimized_ops(exp.path)
    assert ops["QGemm"] == 2 and not {"Gemm", "MatMul", "DequantizeLinear"} & set(ops), ops


def test_quantize_outputs_gives_quantized_logits(tmp_path):
    """``quantize_outputs=True`` (classifiers): the last ``Gemm`` writes uint8 codes, so its
    output is clamped to the calibrated range: at most 256 values, as documented."""
    q, calib = _quantized(Regressor, (16, 32))
    exp = export_onnx(q, tmp_path / "m.onnx", calib[0], calibration=calib, quantize_outputs=True)
    assert "/fc2/Gemm" in exp.requantized
    ops = _optimized_ops(exp.path)
    assert ops["QGemm"] == 2 and ops["DequantizeLinear"] == 1 and "Add" not in ops, ops
    sess, _ = ort_session(exp.path)
    x = 3 * torch.randn(64, 32, generator=torch.Generator().manual_seed(7))
    out = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        calib_hi = max(float(q(c).max()) for c in calib)
    assert out.max() <= calib_hi * 1.01  # clamped at the calibrated maximum
