"""save/load: exact round trips, no pickle, clear errors for corrupted artifacts, model size."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from _models import SmallCNN, small_cnn
from torch import nn

import lowbit
from lowbit.errors import ArtifactError
from lowbit.nn import QuantConv
from lowbit.serialization import META, TENSOR_FILE_RE, tensor_file
from lowbit.transforms.bn_fold import FoldedBatchNorm

PRESETS = ["W8A8", "W8A8-dynamic", "W8A16", "FP16", "BF16"]


class Tied(nn.Module):
    """Two Linear layers sharing one weight Parameter."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def cnn_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 8, 8, generator=g) for _ in range(2)]


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key, tensor in sa.items():
        assert tensor.dtype == sb[key].dtype, key
        assert torch.equal(tensor, sb[key]), key


def round_trip(qmodel: nn.Module, skeleton: nn.Module, path: Path) -> nn.Module:
    lowbit.save(qmodel, path)
    return lowbit.load(path, skeleton)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """A saved W8A8 small CNN, copied by tests that corrupt it."""
    path = tmp_path_factory.mktemp("artifact") / "w8a8"
    lowbit.save(lowbit.quantize(small_cnn(), "W8A8", calibration=cnn_batches()), path)
    return path


@pytest.fixture
def copy_of(artifact, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(artifact, dst)
    return dst


def _edit_meta(path: Path, edit) -> None:
    meta = json.loads((path / META).read_text())
    edit(meta)
    (path / META).write_text(json.dumps(meta))


# -- exact round trips ------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
def test_small_cnn_round_trip_is_exact(preset: str, tmp_path) -> None:
    qmodel = lowbit.quantize(small_cnn(), preset, calibration=cnn_batches())
    loaded = round_trip(qmodel, SmallCNN(), tmp_path / preset)
    assert_same_state(qmodel, loaded)
    assert [type(m) for m in loaded.modules()] == [type(m) for m in qmodel.modules()]
    assert not loaded.training
    x = torch.randn(3, 3, 8, 8)
    assert torch.equal(loaded(x), qmodel(x))
    rec, rec2 = qmodel.lowbit_record, loaded.lowbit_record
    assert rec2.config == rec.config
    assert rec2.layers == rec.layers and rec2.folded == rec.folded and rec2.skipped == rec.skipped


def test_bn_folded_into_bias_free_conv(tmp_path) -> None:
    qmodel = lowbit.quantize(small_cnn(), "W8A8-dynamic")
    assert qmodel.lowbit_record.folded[0]["bias_added"] is True
    loaded = round_trip(qmodel, SmallCNN(), tmp_path / "a")
    assert isinstance(loaded.bn, FoldedBatchNorm)
    assert isinstance(loaded.conv, QuantConv) and loaded.conv.bias is not None
    assert torch.equal(loaded.conv.bias, qmodel.conv.bias)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x), qmodel(x))


@pytest.mark.parametrize("preset", [*PRESETS, None])
def test_tied_weights_round_trip(preset: str | None, tmp_path) -> None:
    torch.manual_seed(0)
    model = Tied().eval()
    x = torch.randn(3, 16)
    qmodel = lowbit.quantize(model, preset, calibration=[x]) if preset else model
    loaded = round_trip(qmodel, Tied(), tmp_path / str(preset))
    assert_same_state(qmodel, loaded)
    assert torch.equal(loaded(x), qmodel(x))


def test_tied_float_weights_are_stored_once(tmp_path) -> None:
    torch.manual_seed(0)
    model = Tied().eval()
    lowbit.save(model, tmp_path / "f")
    meta = json.loads((tmp_path / "f" / META).read_text())
    assert meta["aliases"] == {"b.weight": "a.weight"}
    loaded = lowbit.load(tmp_path / "f", Tied())
    assert loaded.a.weight is loaded.b.weight
    assert torch.equal(loaded.a.weight, model.a.weight)
    assert lowbit.model_size(model) < lowbit.model_size(nn.Sequential(model.a, nn.Linear(16, 16)))


def test_tied_weights_with_one_layer_excluded(tmp_path) -> None:
    torch.manual_seed(0)
    qmodel = lowbit.quantize(Tied().eval(), "W8A8-dynamic", exclude=["b"])
    loaded = round_trip(qmodel, Tied(), tmp_path / "x")
    assert type(loaded.b) is nn.Linear
    x = torch.randn(2, 16)
    assert torch.equal(loaded(x), qmodel(x))


def test_mixed_precision_round_trip(tmp_path) -> None:
    qmodel = lowbit.quantize(
        small_cnn(), "W8A8", calibration=cnn_batches(), overrides={"fc": "FP16", "dw": None}
    )
    loaded = round_trip(qmodel, SmallCNN(), tmp_path / "m")
    assert_same_state(qmodel, loaded)
    assert type(loaded.dw) is nn.Conv2d
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x), qmodel(x))


def test_saving_twice_to_the_same_directory_overwrites(tmp_path) -> None:
    q1 = lowbit.quantize(small_cnn(), "BF16")
    q2 = lowbit.quantize(small_cnn(), "W8A8-dynamic")
    lowbit.save(q1, tmp_path / "d")
    lowbit.save(q2, tmp_path / "d")
    names = sorted(p.name for p in (tmp_path / "d").iterdir())  # the first tensor file is gone
    assert len(names) == 2 and names[0] == META and TENSOR_FILE_RE.fullmatch(names[1])
    loaded = lowbit.load(tmp_path / "d", SmallCNN())
    assert isinstance(loaded.fc, type(q2.fc))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("foreign", ["model.safetensors", "model-0123456789abcdef.safetensors",
                                     "pytorch_model.bin", "notes.txt"])  # fmt: skip
def test_saving_beside_foreign_files_keeps_them_byte_identical(tmp_path, foreign) -> None:
    """A save removes only the tensor file an earlier lowbit artifact there names (issue 18)."""
    d = tmp_path / "hf-checkpoint"
    d.mkdir()
    (d / foreign).write_bytes(b"user weights " * 100)
    before = _digest(d / foreign)
    q1 = lowbit.quantize(small_cnn(), "BF16")
    q2 = lowbit.quantize(small_cnn(), "W8A8-dynamic")
    lowbit.save(q1, d)
    first = tensor_file(d)
    lowbit.save(q2, d)  # replaces the first save's tensor file, and only that
    assert _digest(d / foreign) == before
    assert not first.exists()
    assert sorted(p.name for p in d.iterdir()) == sorted([foreign, META, tensor_file(d).name])
    assert lowbit.artifact_size(d) == (d / META).stat().st_size + tensor_file(d).stat().st_size
    assert isinstance(lowbit.load(d, SmallCNN()).fc, type(q2.fc))


def test_saving_over_a_foreign_lowbit_json_is_refused(tmp_path) -> None:
    (tmp_path / META).write_text('{"name": "not lowbit"}')
    with pytest.raises(ArtifactError, match="not lowbit metadata; refusing to overwrite"):
        lowbit.save(small_cnn(), tmp_path)
    assert (tmp_path / META).read_text() == '{"name": "not lowbit"}'


@pytest.mark.parametrize("preset", ["W8A8", "W8A8-dynamic", "W4A16", "W4A8", "NF4", "FP16"])
@pytest.mark.parametrize("make", [lambda: nn.Linear(128, 8), lambda: nn.Conv2d(16, 8, 2)])
def test_a_bare_layer_round_trips(preset: str, make, tmp_path) -> None:
    """lowbit.quantize(nn.Linear(...)) saved, then loaded: a new quantized layer (issue 18)."""
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(4, 128) if isinstance(layer, nn.Linear) else torch.randn(2, 16, 8, 8)
    qlayer = lowbit.quantize(layer, preset, calibration=[x])
    skeleton = make()
    before = {k: v.clone() for k, v in skeleton.state_dict().items()}
    loaded = round_trip(qlayer, skeleton, tmp_path / "bare")
    assert type(loaded) is type(qlayer) and loaded is not skeleton
    assert_same_state(qlayer, loaded)
    assert torch.equal(loaded(x), qlayer(x))
    assert set(loaded.lowbit_record.layers) == {""}
    assert type(skeleton) is type(layer)  # the skeleton is left as it was
    assert all(torch.equal(v, before[k]) for k, v in skeleton.state_dict().items())


def test_a_bare_layer_into_a_skeleton_of_another_shape_is_refused(tmp_path) -> None:
    qlayer = lowbit.quantize(nn.Linear(32, 8), "W8A8-dynamic")
    lowbit.save(qlayer, tmp_path / "bare")
    with pytest.raises(ArtifactError, match="do not fit|does not fit"):
        lowbit.load(tmp_path / "bare", nn.Linear(16, 8))


# -- artifact format --------------------------------------------------------------------------
def test_artifact_holds_safetensors_and_json_only(artifact) -> None:
    names = sorted(p.name for p in artifact.iterdir())
    assert names == ["lowbit.json", tensor_file(artifact).name]
    assert TENSOR_FILE_RE.fullmatch(names[1])
    assert not any(
        p.suffix in (".pt", ".pth", ".pkl", ".pickle", ".bin") for p in artifact.iterdir()
    )
    raw = tensor_file(artifact).read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])  # safetensors: u64 LE header size, then JSON
    assert 8 + header_len <= len(raw)
    assert raw[8:9] == b"{"
    header = json.loads(raw[8 : 8 + header_len])
    assert header["__metadata__"] == {"format": "lowbit"}
    assert header["fc.qweight"]["dtype"] == "I8"
    assert b"\x80\x02" not in raw[:2] and b"PK" != raw[:2]  # not a pickle nor a torch zip
    meta = json.loads((artifact / META).read_text())
    assert meta["format"] == "lowbit" and meta["format_version"] == 2
    assert meta["tensors_file"] == f"model-{meta['tensors_sha256'][:16]}.safetensors"
    assert set(meta["layers"]) == {"conv", "dw", "fc"}
    assert len(meta["tensors_sha256"]) == 64


def test_artifact_size_is_the_sum_of_file_sizes(artifact) -> None:
    expected = sum(p.stat().st_size for p in artifact.iterdir())
    assert lowbit.artifact_size(artifact) == expected


def test_int8_model_is_about_a_quarter_of_the_float_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(512, 512) for _ in range(4)])
    qmodel = lowbit.quantize(model, "W8A8-dynamic")
    float_size, int8_size = lowbit.model_size(model), lowbit.model_size(qmodel)
    assert float_size > 4 * 512 * 512 * 4
    assert int8_size <= 0.27 * float_size
    assert lowbit.model_size(lowbit.quantize(model, "FP16")) <= 0.52 * float_size


# -- corrupted artifacts ----------------------------------------------------------------------
def test_flipped_byte_in_tensor_file_fails_the_checksum(copy_of) -> None:
    data = bytearray(tensor_file(copy_of).read_bytes())
    data[-3] ^= 0x01
    tensor_file(copy_of).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="SHA-256 does not match"):
        lowbit.load(copy_of, SmallCNN())


def test_truncated_tensor_file(copy_of) -> None:
    data = tensor_file(copy_of).read_bytes()
    tensor_file(copy_of).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated or modified"):
        lowbit.load(copy_of, SmallCNN())


def test_tensor_file_with_a_matching_checksum_but_bad_content(copy_of) -> None:
    path = tensor_file(copy_of)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    _edit_meta(copy_of, lambda m: m.update(tensors_sha256=digest))
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        lowbit.load(copy_of, SmallCNN())


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b""])
def test_invalid_json(copy_of, content: bytes) -> None:
    (copy_of / META).write_bytes(content)
    with pytest.raises(ArtifactError, match="not valid JSON"):
        lowbit.load(copy_of, SmallCNN())


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.update(format="onnx"), "not lowbit metadata"),
        (lambda m: m.pop("format"), "not lowbit metadata"),
        (lambda m: m.update(format_version=99), "format version 99"),
        (lambda m: m.update(format_version="1"), "format version '1'"),
        (lambda m: m.pop("format_version"), "format version None"),
        (lambda m: m.update(layers=[]), "'layers' is missing or malformed"),
        (lambda m: m.pop("aliases"), "'aliases' is missing or malformed"),
        (lambda m: m.update(folded={}), "'folded' is missing or malformed"),
        (lambda m: m.update(aliases={"x": "nowhere"}), "alias 'x' points at missing tensor"),
        (lambda m: m["layers"]["fc"].update(type="EvilLayer"), "unknown type"),
        (lambda m: m["layers"].update(fc="QuantLinear"), "malformed spec"),
        (lambda m: m["layers"]["fc"]["scheme"].update(mode="turbo"), "invalid scheme"),
    ],
)
def test_wrong_metadata(copy_of, edit, match: str) -> None:
    _edit_meta(copy_of, edit)
    with pytest.raises(ArtifactError, match=match):
        lowbit.load(copy_of, SmallCNN())


def test_json_that_is_not_an_object(copy_of) -> None:
    (copy_of / META).write_text("[1, 2, 3]")
    with pytest.raises(ArtifactError, match="not lowbit metadata"):
        lowbit.load(copy_of, SmallCNN())


@pytest.mark.parametrize("missing", ["tensors", META])
def test_missing_file(copy_of, missing: str) -> None:
    path = tensor_file(copy_of) if missing == "tensors" else copy_of / META
    path.unlink()
    with pytest.raises(ArtifactError, match=f"missing {path.name}"):
        lowbit.load(copy_of, SmallCNN())


def test_non_existent_directory(tmp_path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        lowbit.load(tmp_path / "nope", SmallCNN())


def test_a_file_instead_of_a_directory(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="not a lowbit artifact directory"):
        lowbit.load(tmp_path / "file", SmallCNN())


class Wider(SmallCNN):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 12)


class Different(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4)


@pytest.mark.parametrize(
    ("skeleton", "match"),
    [(Wider, "tensors do not fit this model"), (Different, "does not fit this model")],
)
def test_skeleton_of_a_different_architecture(copy_of, skeleton, match: str) -> None:
    with pytest.raises(ArtifactError, match=match):
        lowbit.load(copy_of, skeleton())


def test_artifact_error_is_an_os_error(tmp_path) -> None:
    with pytest.raises(OSError):
        lowbit.load(tmp_path / "nope", SmallCNN())


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["config"].update(bogus=1),
        lambda m: m["config"].update(version=99),
        lambda m: m.update(config={"no": "scheme"}),
    ],
)
def test_corrupted_config_entry_raises_artifact_error(copy_of, edit) -> None:
    _edit_meta(copy_of, edit)
    with pytest.raises(ArtifactError):
        lowbit.load(copy_of, SmallCNN())
