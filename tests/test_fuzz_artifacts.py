"""Fuzzing the artifact loader: mutated metadata, tensor files and both (hypothesis, bounded).

Every mutated artifact must either load or raise one of lowbit's own errors; any other exception
(a KeyError, a torch RuntimeError, a RecursionError...) fails the test. A failed load must also
leave the skeleton as it was. Each target runs a fixed number of examples (see ``EXAMPLES``), a
few seconds in all.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from _models import SmallCNN, small_cnn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.errors import LowbitError
from lowbit.serialization import META, tensor_file

EXAMPLES = 150
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])  # fmt: skip

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A W4A8 CNN (packed 4-bit codes, static activations, a folded BatchNorm)."""
    path = tmp_path_factory.mktemp("fuzz") / "base"
    calib = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))]
    lowbit.save(lowbit.quantize(small_cnn(), "W4A8", calibration=calib), path)
    return path


def _paths(meta_obj) -> list[tuple]:
    """Every key path in a JSON object (dict keys and list indices)."""
    out = []
    if isinstance(meta_obj, dict):
        items = meta_obj.items()
    elif isinstance(meta_obj, list):
        items = enumerate(meta_obj)
    else:
        return out
    for k, v in items:
        out.append((k,))
        out += [(k, *rest) for rest in _paths(v)]
    return out


def _load_or_lowbit_error(path: Path) -> None:
    skeleton = SmallCNN()
    before = [(n, type(m).__name__) for n, m in skeleton.named_modules()]
    try:
        lowbit.load(path, skeleton)
    except LowbitError:
        assert [(n, type(m).__name__) for n, m in skeleton.named_modules()] == before
    # anything else propagates and fails the test


def _rehash(path: Path) -> None:
    meta = json.loads((path / META).read_text())
    f = next(p for p in path.iterdir() if p.name != META)
    meta["tensors_sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (path / META).write_text(json.dumps(meta))


@FUZZ
@given(data=st.data())
def test_fuzz_metadata_values(base, data):
    """Replace or delete one entry anywhere in lowbit.json (the checksum stays valid)."""
    meta = json.loads((base / META).read_text())
    paths = _paths(meta)
    where = data.draw(st.sampled_from(paths))
    parent = meta
    for k in where[:-1]:
        parent = parent[k]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[where[-1]]
    else:
        parent[where[-1]] = data.draw(JSON)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a"
        shutil.copytree(base, path)
        (path / META).write_text(json.dumps(meta))
        _load_or_lowbit_error(path)


@FUZZ
@given(data=st.data())
def test_fuzz_metadata_bytes(base, data):
    """Flip, cut or splice bytes of lowbit.json."""
    raw = bytearray((base / META).read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del raw[i : i + data.draw(st.integers(1, 64))]
        else:
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=16))
        if not raw:
            break
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a"
        shutil.copytree(base, path)
        (path / META).write_bytes(bytes(raw))
        _load_or_lowbit_error(path)


@FUZZ
@given(data=st.data())
def test_fuzz_tensor_file_with_a_recomputed_checksum(base, data):
    """Corrupt the safetensors file (header or data) and re-hash it, as a tampering tool would."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a"
        shutil.copytree(base, path)
        f = tensor_file(path)
        raw = bytearray(f.read_bytes())
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(raw) - 1))
            if data.draw(st.booleans()):
                raw[i] = data.draw(st.integers(0, 255))
            else:
                del raw[i : i + data.draw(st.integers(1, 256))]
            if not raw:
                break
        f.write_bytes(bytes(raw))
        _rehash(path)
        _load_or_lowbit_error(path)
