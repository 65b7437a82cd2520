"""Artifacts that were edited on purpose, interrupted saves, and byte-identical re-saves.

The SHA-256 in lowbit.json catches accidental damage; these tests edit a tensor *and* re-hash it,
as a hostile or careless tool would, and check that the values themselves are refused, that the
skeleton passed to ``load`` is left exactly as it was, and that saving is atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from _models import SmallCNN, small_cnn
from safetensors.torch import load_file, save_file
from torch import nn

import lowbit
from lowbit.errors import ArtifactError, InvalidModelError
from lowbit.serialization import META, TENSOR_FILE_RE, tensor_file


def _batches():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, 8, 8, generator=g) for _ in range(2)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("a") / "w4"
    lowbit.save(lowbit.quantize(small_cnn(), "W4A8", calibration=_batches()), path)
    return path


@pytest.fixture
def art(saved, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(saved, dst)
    return dst


def _retamper(path: Path, edit) -> None:
    """Edit the tensors, rewrite the file and its recorded SHA-256 (a valid-looking artifact)."""
    f = tensor_file(path)
    tensors = load_file(str(f))
    edit(tensors)
    save_file(tensors, str(f), metadata={"format": "lowbit"})
    meta = json.loads((path / META).read_text())
    meta["tensors_sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (path / META).write_text(json.dumps(meta))


def _structure(model: nn.Module) -> list:
    return [(n, type(m).__name__, sorted(m._parameters), sorted(m._buffers))
            for n, m in model.named_modules()]  # fmt: skip


def _nan_scale(t):
    t["fc.weight_scale"][0] = float("nan")


def _negative_scale(t):
    t["fc.weight_scale"][0] = -1.0


def _zero_input_scale(t):
    t["fc.input_scale"].fill_(0.0)


def _zero_point_out_of_range(t):
    t["fc.input_zero_point"].fill_(100_000)


def _float_codes(t):
    t["fc.qweight"] = t["fc.qweight"].float()


def _extra_tensor(t):
    t["evil"] = torch.zeros(3)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_nan_scale, "finite positive scales"),
        (_negative_scale, "finite positive scales"),
        (_zero_input_scale, "finite positive scales"),
        (_zero_point_out_of_range, "codes outside"),
        (_float_codes, "torch.float32"),
        (_extra_tensor, "unexpected \\['evil'\\]"),
    ],
    ids=[
        "nan-scale",
        "negative-scale",
        "zero-input-scale",
        "zero-point",
        "dtype",
        "extra-tensor",
    ],  # fmt: skip
)
def test_tampered_values_with_a_valid_checksum_are_refused(art, edit, match):
    _retamper(art, edit)
    skeleton = SmallCNN()
    before = _structure(skeleton)
    weights = {k: v.clone() for k, v in skeleton.state_dict().items()}
    with pytest.raises(ArtifactError, match=match):
        lowbit.load(art, skeleton)
    assert _structure(skeleton) == before  # not half-rebuilt
    assert all(torch.equal(v, weights[k]) for k, v in skeleton.state_dict().items())


def test_codes_outside_the_format_are_refused(tmp_path):
    """Ternary codes take 2 bits (0..2): a packed byte of 0xFF decodes to 3, not a ternary code."""
    lowbit.save(lowbit.quantize(small_cnn(), "TERNARY"), tmp_path / "t")

    def edit(t):
        t["fc.qweight"] = t["fc.qweight"].clone()
        t["fc.qweight"][0] = 0xFF

    _retamper(tmp_path / "t", edit)
    with pytest.raises(ArtifactError, match="codes outside 0..2"):
        lowbit.load(tmp_path / "t", SmallCNN())


class NoBatchNorm(SmallCNN):
    def __init__(self):
        super().__init__()
        self.bn = nn.Identity()


class Wider(SmallCNN):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 12)


@pytest.mark.parametrize("cls", [NoBatchNorm, Wider])
def test_a_skeleton_that_does_not_fit_is_left_untouched(art, cls):
    skeleton = cls()
    before = _structure(skeleton)
    with pytest.raises(ArtifactError, match="not fit|not a foldable BatchNorm"):
        lowbit.load(art, skeleton)
    assert _structure(skeleton) == before


@pytest.mark.parametrize("version", [0, -5, True, 3, "2", 2.0])
def test_format_versions_outside_the_known_ones_are_refused(art, version):
    meta = json.loads((art / META).read_text())
    meta["format_version"] = version
    (art / META).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="format version"):
        lowbit.load(art, SmallCNN())


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(tensors_file="../../etc/passwd"),
        lambda m: m.update(tensors_file=5),
        lambda m: m.update(linearized=[5]),
        lambda m: m.update(packed=[]),
        lambda m: m.update(packed={"fc.qweight": {"bits": 4, "qmin": 0, "shape": [-64]}}),
        lambda m: m.update(packed={"fc.qweight": {"bits": 4, "qmin": 0, "shape": [10**12]}}),
    ],
    ids=["path-escape", "name-type", "linearized", "packed-list", "negative-shape", "huge-shape"],
)
def test_malformed_metadata_gives_an_artifact_error(art, edit):
    meta = json.loads((art / META).read_text())
    edit(meta)
    (art / META).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError):
        lowbit.load(art, SmallCNN())


def test_a_format_1_artifact_still_loads(art):
    """Format 1 stored the tensors as model.safetensors, without a tensors_file entry."""
    meta = json.loads((art / META).read_text())
    tensor_file(art).rename(art / "model.safetensors")
    meta["format_version"] = 1
    del meta["tensors_file"]
    (art / META).write_text(json.dumps(meta))
    loaded = lowbit.load(art, SmallCNN())
    x = _batches()[0]
    reference = lowbit.quantize(small_cnn(), "W4A8", calibration=_batches())
    assert torch.equal(loaded(x), reference(x))


# -- saving ------------------------------------------------------------------------------------
def _fails_at(monkeypatch, target: str):
    """Make ``os.replace`` raise when it would move a file onto ``target``."""
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == target or (
            target == "tensors" and TENSOR_FILE_RE.fullmatch(Path(dst).name)
        ):
            raise OSError(28, "No space left on device (simulated)")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("where", ["tensors", META])
def test_an_interrupted_save_keeps_the_previous_artifact(tmp_path, monkeypatch, where):
    old = lowbit.quantize(small_cnn(), "W8A8", calibration=_batches())
    lowbit.save(old, tmp_path / "m")
    new = lowbit.quantize(small_cnn(seed=1), "W4A16")
    _fails_at(monkeypatch, where)
    with pytest.raises(ArtifactError, match="previous artifact there, if any, is unchanged"):
        lowbit.save(new, tmp_path / "m")
    monkeypatch.undo()
    x = _batches()[0]
    assert torch.equal(lowbit.load(tmp_path / "m", SmallCNN())(x), old(x))
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".lowbit-")]


def test_a_failed_first_save_leaves_no_directory(tmp_path, monkeypatch):
    _fails_at(monkeypatch, META)
    with pytest.raises(ArtifactError):
        lowbit.save(small_cnn(), tmp_path / "new")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("preset", "algorithm"),
    [
        ("W8A8", None),
        ("W4A16-g128", "gptq"),
        ("KMEANS16", None),
        ("W4A8", "adaround"),
        ("W8A8", "smoothquant"),
    ],  # fmt: skip
)
def test_the_same_inputs_save_to_identical_bytes(tmp_path, preset, algorithm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 128)).eval()
    calib = [torch.randn(16, 128, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    digests = []
    for run in range(2):
        torch.manual_seed(1000 + run)  # a different global seed must not matter
        q = lowbit.quantize(model, preset, calibration=calib, algorithm=algorithm)
        out = lowbit.save(q, tmp_path / f"run{run}")
        digests.append(sorted((p.name, hashlib.sha256(p.read_bytes()).hexdigest())
                              for p in out.iterdir()))  # fmt: skip
    assert digests[0] == digests[1]


def test_quantizing_a_quantized_model_is_refused():
    q = lowbit.quantize(small_cnn(), "W8A8", calibration=_batches())
    with pytest.raises(InvalidModelError, match="already quantized"):
        lowbit.quantize(q, "W4A16")
    from lowbit.qat import prepare

    with pytest.raises(InvalidModelError, match="already quantized"):
        prepare(q, "W4A8", calibration=_batches())
    assert q.lowbit_record.layers  # the record is untouched
