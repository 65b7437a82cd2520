"""lowbit.export_onnx of a bare quantized layer (issue 18 C): the model *is* the layer.

The export swapped each quantized submodule for its twin by name; the root's name is ``""``, so
a bare layer was set as its own child (``setattr(layer, "", ...)``): infinite recursion in the
export, in ``repr`` and in ``copy``, and a corrupted object afterwards.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowbit
from lowbit.export import export_onnx
from lowbit.measure.accuracy import sqnr_db

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
from lowbit.export.ort import ort_session  # noqa: E402

CASES = [
    (lambda: nn.Linear(64, 32), "W8A8", (8, 64)),
    (lambda: nn.Linear(64, 32), "W8A8-dynamic", (8, 64)),
    (lambda: nn.Conv2d(3, 8, 3, padding=1), "W8A8", (4, 3, 8, 8)),
]


@pytest.mark.parametrize("make,scheme,shape", CASES)
def test_bare_layer_exports_and_is_left_intact(tmp_path, make, scheme, shape):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(*shape, generator=g) for _ in range(3)]
    q = lowbit.quantize(make().eval(), scheme, calibration=calib)
    x = torch.randn(*shape, generator=g)
    with torch.no_grad():
        before = q(x)
    text = repr(q)
    exp = export_onnx(q, tmp_path / "layer.onnx", calib[0], calibration=calib)
    assert list(exp.layers) == [""] and not exp.float_layers, exp.layers
    assert list(q.children()) == [] and repr(q) == text  # not its own child
    with torch.no_grad():
        assert torch.equal(q(x), before)
        assert torch.equal(copy.copy(q)(x), before)
        if isinstance(q, lowbit.nn.QuantLinear):  # oneDNN-prepacked convs cannot be deep-copied
            assert torch.equal(copy.deepcopy(q)(x), before)
    sess, _ops = ort_session(exp.path)
    out = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    assert sqnr_db(before, out) > 40  # the same codes and scales; float rounding only
