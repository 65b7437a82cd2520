"""Save and load quantized models: safetensors for tensors, JSON for structure. No pickle anywhere.

An artifact is a directory::

    model.safetensors   every tensor of the state dict (int8 weights, scales, zero points, floats)
    lowbit.json         format version, the QuantConfig, folded BatchNorms, each quantized layer's
                        spec, tensor aliases (tied weights), and the SHA-256 of model.safetensors

``load`` rebuilds the quantized model from a float skeleton of the same architecture:

>>> lowbit.save(qmodel, "out/")  # doctest: +SKIP
>>> qmodel2 = lowbit.load("out/", MyNet())     # MyNet() only provides the architecture  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lowbit.config import QuantConfig
from lowbit.errors import ArtifactError, ConfigError
from lowbit.formats import get_format
from lowbit.nn import LAYER_TYPES
from lowbit.packing import pack, unpack
from lowbit.quantize import QuantizationRecord
from lowbit.transforms.bn_fold import _set, apply_folds_
from lowbit.transforms.linearize import linearize_

__all__ = ["save", "load", "artifact_size", "model_size", "FORMAT_VERSION"]

FORMAT_VERSION = 1
TENSORS, META = "model.safetensors", "lowbit.json"
_MAX_JSON_BYTES = 64 << 20  # a layer spec is ~200 bytes; anything near this is not ours


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dedup(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store tensors that share memory (tied weights) once; map the others to that key."""
    seen: dict[tuple, str] = {}
    tensors, aliases = {}, {}
    for key, t in state.items():
        ident = (
            (
                t.untyped_storage().data_ptr(),
                t.storage_offset(),
                tuple(t.shape),
                tuple(t.stride()),
                t.dtype,
            )
            if t.numel()
            else None
        )
        if ident is not None and ident in seen:
            aliases[key] = seen[ident]
            continue
        if ident is not None:
            seen[ident] = key
        tensors[key] = t.detach().contiguous().clone()
    return tensors, aliases


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` (quantized or float) to the directory ``path``; returns the path.

    Files are written to temporary names and renamed, so a crash never leaves half an artifact.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _dedup(model.state_dict())
    record: QuantizationRecord | None = getattr(model, "lowbit_record", None)
    packed = _pack_low_bit_(tensors, record.layers if record else {})
    with tempfile.NamedTemporaryFile(dir=out, suffix=".tmp", delete=False) as tmp:
        tmp_tensors = Path(tmp.name)
    try:
        save_file(tensors, str(tmp_tensors), metadata={"format": "lowbit"})
        meta = {
            "format": "lowbit",
            "format_version": FORMAT_VERSION,
            "config": record.config.to_dict() if record else None,
            "folded": record.folded if record else [],
            "linearized": record.linearized if record else [],
            "layers": record.layers if record else {},
            "skipped": record.skipped if record else {},
            "ptq": record.ptq if record else {},
            "aliases": aliases,
            "packed": packed,
            "tensors_sha256": _sha256(tmp_tensors),
        }
        tmp_meta = out / (META + ".tmp")
        tmp_meta.write_text(json.dumps(meta, indent=1, sort_keys=True))
        os.replace(tmp_tensors, out / TENSORS)
        os.replace(tmp_meta, out / META)
    finally:
        tmp_tensors.unlink(missing_ok=True)
    return out


def _pack_low_bit_(tensors: dict[str, torch.Tensor], layers: dict[str, Any]) -> dict[str, Any]:
    """Replace sub-8-bit weight codes by their exact bit-packing; return how to undo it."""
    packed = {}
    for name, spec in layers.items():
        weight = (spec.get("scheme") or {}).get("weight") or {}
        key = f"{name}.qweight" if name else "qweight"
        if "format" not in weight or key not in tensors:
            continue
        fmt = get_format(weight["format"])
        if fmt.bits >= 8:
            continue
        qmin = getattr(fmt, "qmin", 0)  # grid and codebook codes are already indices >= 0
        codes = tensors[key]
        tensors[key] = pack(codes.to(torch.int16) - qmin, fmt.bits)
        packed[key] = {"bits": fmt.bits, "qmin": qmin, "shape": list(codes.shape)}
    return packed


def _unpack_low_bit_(tensors: dict[str, torch.Tensor], packed: dict[str, Any]) -> None:
    for key, info in packed.items():
        try:
            bits, qmin, shape = (
                int(info["bits"]),
                int(info["qmin"]),
                [int(s) for s in info["shape"]],
            )
            codes = unpack(tensors[key], bits, math.prod(shape)).to(torch.int16) + qmin
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ArtifactError(f"packed tensor {key!r} cannot be unpacked: {exc}") from None
        # the storage dtype of the format: int8 for signed grids, uint8 for unsigned ones
        tensors[key] = codes.to(torch.int8 if qmin < 0 else torch.uint8).reshape(shape)


def artifact_size(path: str | os.PathLike) -> int:
    """Bytes on disk of an artifact directory (both files)."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def model_size(model: nn.Module) -> int:
    """Size in bytes of ``model`` as lowbit saves it: the number the report calls model size."""
    with tempfile.TemporaryDirectory() as tmp:
        return artifact_size(save(model, tmp))


def _read_meta(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a lowbit artifact directory (it does not exist)")
    meta_path, tensor_path = root / META, root / TENSORS
    for p in (meta_path, tensor_path):
        if not p.is_file():
            raise ArtifactError(f"{root} is missing {p.name}; was it written by lowbit.save?")
    if meta_path.stat().st_size > _MAX_JSON_BYTES:
        raise ArtifactError(f"{meta_path} is implausibly large for lowbit metadata; refusing it")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{meta_path} is corrupted (not valid JSON: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != "lowbit":
        raise ArtifactError(f"{meta_path} is not lowbit metadata")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"{root} has format version {version!r}; this lowbit reads up to {FORMAT_VERSION}"
        )
    meta.setdefault("linearized", [])  # absent in artifacts written before it existed
    for key, kind in (("layers", dict), ("folded", list), ("aliases", dict), ("skipped", dict),
                      ("linearized", list)):  # fmt: skip
        if not isinstance(meta.get(key), kind):
            raise ArtifactError(f"{meta_path}: entry {key!r} is missing or malformed")
    if meta.get("config") is not None:
        try:
            meta["config"] = QuantConfig.from_dict(meta["config"])
        except (ConfigError, TypeError, AttributeError) as exc:
            raise ArtifactError(f"{meta_path}: the stored config is invalid ({exc})") from None
    if _sha256(tensor_path) != meta.get("tensors_sha256"):
        raise ArtifactError(
            f"{tensor_path} is corrupted: its SHA-256 does not match the one recorded at save "
            "time (truncated or modified file); re-export the model"
        )
    return meta


def _rebuild(model: nn.Module, meta: dict[str, Any]) -> None:
    """Turn the float skeleton into the saved structure (folds, then quantized shells)."""
    try:
        linearize_(model, meta.get("linearized", []))  # as quantize did (GPT-2's Conv1D)
        apply_folds_(model, meta["folded"])
        for name, spec in meta["layers"].items():
            cls = LAYER_TYPES.get(spec.get("type")) if isinstance(spec, dict) else None
            if cls is None:
                kind = spec.get("type") if isinstance(spec, dict) else spec
                raise ArtifactError(f"layer {name!r} has unknown type {kind!r}")
            if not name:
                raise ArtifactError("a single-layer model cannot be rebuilt in place; wrap it")
            _set(model, name, cls.from_spec(spec, model.get_submodule(name)))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(
            f"the artifact does not fit this model ({exc}); pass a float skeleton of the same "
            "architecture that was quantized"
        ) from None


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Rebuild a saved model into ``model`` (a float skeleton, modified in place) and return it."""
    root = Path(path)
    meta = _read_meta(root)
    try:
        tensors = load_file(str(root / TENSORS))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ArtifactError(f"{root / TENSORS} is not a readable safetensors file: {exc}") from None
    _unpack_low_bit_(tensors, meta.get("packed") or {})
    for key, target in meta["aliases"].items():
        if target not in tensors:
            raise ArtifactError(f"alias {key!r} points at missing tensor {target!r}")
        tensors[key] = tensors[target]
    _rebuild(model, meta)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(
            f"the artifact's tensors do not fit this model: {exc}. Pass a float skeleton of the "
            "same architecture (and configuration) as the quantized model"
        ) from None
    model.eval()
    if meta.get("config") is not None:
        model.lowbit_record = QuantizationRecord(
            config=meta["config"],
            folded=meta["folded"],
            linearized=meta.get("linearized", []),
            layers=meta["layers"],
            skipped=meta["skipped"],
            ptq=meta.get("ptq", {}),
        )
    return model
