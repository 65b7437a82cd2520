"""W4A16-g128: 4-bit group-wise weights on torch's int4 kernel, packed to ~4.2 bits on disk."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.measure import sqnr_db
from lowbit.nn import QuantLinear
from lowbit.serialization import tensor_file


@pytest.fixture()
def layer():
    torch.manual_seed(0)
    return nn.Linear(256, 64)


def test_int4_kernel_matches_reference_and_float(layer):
    q = lowbit.quantize(layer, "W4A16-g128")
    assert "int4pack" in q.kernel
    assert (
        q.qweight.dtype == torch.uint8 and int(q.qweight.min()) >= 0 and int(q.qweight.max()) <= 15
    )
    assert q.weight_scale.shape == (64, 2) and q.weight_scale.dtype == torch.bfloat16
    x = torch.randn(5, 3, 256)
    y = q(x)
    assert y.shape == (5, 3, 64) and y.dtype == torch.float32
    ref = q._forward_reference(x.reshape(-1, 256)).reshape(5, 3, 64)
    assert sqnr_db(ref, y) > 40  # the kernel vs the dequantize-then-matmul oracle (bf16 math)
    assert sqnr_db(layer(x), y) > 18  # 4-bit, 16 levels per group of 128


def test_shapes_the_int4_kernel_rejects_run_on_the_int8_kernel():
    torch.manual_seed(0)
    odd = nn.Linear(256, 10)  # the int4 kernel needs out_features % 16 == 0
    q = QuantLinear.from_float(odd, lowbit.get_preset("W4A16-g128"))
    assert "int8pack" in q.kernel and "expanded to int8" in q.kernel
    x = torch.randn(4, 256)
    assert sqnr_db(q._forward_reference(x), q(x)) > 35  # the 8-bit expansion is near-exact
    assert sqnr_db(odd(x), q(x)) > 18


def test_shapes_no_kernel_takes_fall_back_loudly():
    odd = nn.Linear(200, 10)  # neither int4 (group 40) nor int8pack (K % 16) fits
    spec = lowbit.TensorQuantSpec("uint4", "per_group:40", symmetric=False)
    scheme = lowbit.QuantScheme("W4-g40", "weight_only", weight=spec, compute_dtype="bf16")
    with pytest.warns(RuntimeWarning, match="multiple of 16"):
        q = QuantLinear.from_float(odd, scheme)
    x = torch.randn(4, 200)
    assert q.kernel.startswith("reference")
    assert sqnr_db(odd(x), q(x)) > 18


def test_packed_on_disk_at_most_4_3_bits_per_weight_and_exact_reload(tmp_path):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(1024, 1024, bias=False), nn.ReLU(), nn.Linear(1024, 512))
    q = lowbit.quantize(model, "W4A16-g128")
    lowbit.save(q, tmp_path)
    n_weights = 1024 * 1024 + 1024 * 512
    bits = tensor_file(tmp_path).stat().st_size * 8 / n_weights
    assert bits <= 4.3, bits
    fresh = nn.Sequential(nn.Linear(1024, 1024, bias=False), nn.ReLU(), nn.Linear(1024, 512))
    loaded = lowbit.load(tmp_path, fresh)
    x = torch.randn(3, 1024)
    assert torch.equal(loaded(x), q(x))
    assert torch.equal(loaded[0].qweight, q[0].qweight)


def test_corrupted_packing_metadata_is_an_artifact_error(tmp_path):
    import json

    q = lowbit.quantize(nn.Sequential(nn.Linear(256, 64)), "W4A16-g128")
    lowbit.save(q, tmp_path)
    meta = json.loads((tmp_path / "lowbit.json").read_text())
    meta["packed"]["0.qweight"]["shape"] = [64, 999]
    (tmp_path / "lowbit.json").write_text(json.dumps(meta))
    with pytest.raises(lowbit.ArtifactError, match="cannot be unpacked"):
        lowbit.load(tmp_path, nn.Sequential(nn.Linear(256, 64)))
