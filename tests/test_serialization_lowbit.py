"""Every preset saves and loads exactly, and low-bit artifacts are as small as their bits say."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import ArtifactError
from lowbit.measure import bits_per_weight, sqnr_db
from lowbit.serialization import tensor_file


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Embedding(200, 256), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)
    ).eval()


@pytest.mark.parametrize("preset", lowbit.preset_names())
def test_every_preset_round_trips_exactly(tmp_path, preset) -> None:
    model = _model()
    ids = torch.randint(0, 200, (3, 5))
    scheme = lowbit.get_preset(preset)
    calib = [torch.randint(0, 200, (4, 5))] if scheme.mode.value == "static" else None
    q = lowbit.quantize(model, preset, calibration=calib)
    lowbit.save(q, tmp_path)
    loaded = lowbit.load(tmp_path, _model())
    assert torch.equal(loaded(ids), q(ids))
    for name, buf in q.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], buf), name


# The storage bars, on layers wide enough that per-row scales are small.
@pytest.mark.parametrize(
    ("preset", "low", "high"),
    [("W4A16-g128", 4.0, 4.3), ("BINARY", 1.0, 1.1), ("KMEANS16", 4.0, 4.1)]
    + [("TERNARY", 2.0, 2.1), ("W2A16-g64", 2.0, 2.5), ("W3A16-g128", 3.0, 3.3)]
    + [("NF4", 4.0, 4.3), ("KMEANS4", 2.0, 2.1), ("POT4", 4.0, 4.1), ("W8A16", 8.0, 8.1)],
)
def test_bits_per_weight_on_disk(tmp_path, preset, low, high) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 512))
    path = lowbit.save(lowbit.quantize(model, preset), tmp_path)
    bits = bits_per_weight(path)
    assert low <= bits <= high, bits
    # the whole file too (biases and metadata included) stays close to the nominal width
    weights = 1024 * 1024 + 1024 * 512
    assert tensor_file(path).stat().st_size * 8 / weights <= high + 0.1


def test_grid_codes_out_of_range_after_tampering_are_refused(tmp_path) -> None:
    q = lowbit.quantize(_model(), "NF4")
    lowbit.save(q, tmp_path)
    meta = json.loads((tmp_path / "lowbit.json").read_text())
    key = next(iter(meta["packed"]))
    meta["packed"][key]["bits"] = 3  # now the byte count cannot match
    (tmp_path / "lowbit.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="cannot be unpacked"):
        lowbit.load(tmp_path, _model())


def _conv_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16, 64)
    ).eval()


@pytest.mark.parametrize(
    ("fmt", "gran"),
    [("kmeans16", "per_channel"), ("kmeans16", "per_group:64"), ("nf3", "per_group:32")]
    + [("pot3", "per_channel"), ("int3", "per_channel"), ("kmeans256", "per_tensor")],
)
def test_custom_low_bit_schemes_round_trip_with_convs_and_embeddings(tmp_path, fmt, gran):
    weight = lowbit.TensorQuantSpec(fmt, gran)
    scheme = lowbit.QuantScheme(f"{fmt}-{gran}", "weight_only", weight=weight, compute_dtype="bf16")
    x = torch.randn(2, 64, 4, 4)
    q = lowbit.quantize(_conv_model(), scheme)
    assert not q.lowbit_record.skipped
    lowbit.save(q, tmp_path)
    loaded = lowbit.load(tmp_path, _conv_model())
    assert torch.equal(loaded(x), q(x))
    emb_model = _model()
    q_emb = lowbit.quantize(emb_model, scheme)
    lowbit.save(q_emb, tmp_path / "emb")
    ids = torch.randint(0, 200, (2, 3))
    assert torch.equal(lowbit.load(tmp_path / "emb", _model())(ids), q_emb(ids))


def test_timm_model_with_batchnorm_act_round_trips(tmp_path):
    """timm's BatchNormAct2d folds into the conv and keeps its activation, after a reload too."""
    from lowbit.compat import import_timm

    try:
        timm = import_timm()
    except ImportError:
        pytest.skip("timm is not installed")
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", pretrained=False).eval()
    calib = [torch.randn(2, 3, 64, 64) for _ in range(2)]
    q = lowbit.quantize(model, "W8A8", calibration=calib)
    lowbit.save(q, tmp_path / "m")
    skeleton = timm.create_model("mobilenetv3_small_050", pretrained=False)
    loaded = lowbit.load(tmp_path / "m", skeleton).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
        assert sqnr_db(model(x), q(x)) > 10
