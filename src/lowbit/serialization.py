"""Save and load quantized models: safetensors for tensors, JSON for structure. No pickle anywhere.

An artifact is a directory::

    model-<sha>.safetensors  every tensor of the state dict (int8 weights, scales, zero points,
                             floats), named after the first 16 hex digits of its SHA-256
    lowbit.json              format version, the tensor file's name and SHA-256, the QuantConfig,
                             folded BatchNorms, each quantized layer's spec, tensor aliases

Saving writes the new tensor file beside the old one, then replaces ``lowbit.json`` in one
rename: that rename is the commit, so an interrupted save leaves the previous artifact whole.
Loading checks everything (checksum, metadata types, each tensor's shape and dtype, scales,
zero points and codes: :mod:`lowbit.artifact_checks`) before it touches the skeleton, and puts
the skeleton back as it was if rebuilding it fails. Format 1 artifacts (``model.safetensors``)
still load.

``load`` rebuilds the quantized model from a float skeleton of the same architecture:

>>> lowbit.save(qmodel, "out/")  # doctest: +SKIP
>>> qmodel2 = lowbit.load("out/", MyNet())     # MyNet() only provides the architecture  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
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

from lowbit.artifact_checks import (
    TENSOR_FILE_RE,
    check_layer_values,
    check_meta_types,
    check_tensors_fit,
)
from lowbit.config import QuantConfig
from lowbit.errors import ArtifactError, ConfigError, InvalidModelError
from lowbit.formats import get_format
from lowbit.nn import LAYER_TYPES
from lowbit.packing import pack, unpack
from lowbit.pipeline import QuantizationRecord
from lowbit.transforms.bn_fold import _set, apply_folds_
from lowbit.transforms.linearize import linearize_

__all__ = ["save", "load", "artifact_size", "model_size", "tensor_file", "FORMAT_VERSION"]

FORMAT_VERSION = 2
TENSORS, META = "model.safetensors", "lowbit.json"  # TENSORS: the format 1 name
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

    The tensor file is written under a new name, then ``lowbit.json`` is replaced in one rename
    (the commit); only then is the previous tensor file removed. A crash or an error at any
    point leaves the previous artifact (if any) loadable.
    """
    out = Path(path)
    created = not out.exists()
    record: QuantizationRecord | None = getattr(model, "lowbit_record", None)
    _check_record_covers(model, record)
    tensors, aliases = _dedup(model.state_dict())
    packed = _pack_low_bit_(tensors, record.layers if record else {})
    previous = _previous_tensor_file(out)  # the only file this save may remove
    temps: list[Path] = []
    uncommitted: Path | None = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp_tensors = _temp(out, ".safetensors.tmp", temps)
        save_file(tensors, str(tmp_tensors), metadata={"format": "lowbit"})
        digest = _sha256(tmp_tensors)
        name = f"model-{digest[:16]}.safetensors"
        meta = {
            "format": "lowbit",
            "format_version": FORMAT_VERSION,
            "tensors_file": name,
            "tensors_sha256": digest,
            "config": record.config.to_dict() if record else None,
            "folded": record.folded if record else [],
            "linearized": record.linearized if record else [],
            "layers": record.layers if record else {},
            "skipped": record.skipped if record else {},
            # wall-clock seconds stay in memory: the same model saves to the same bytes
            "ptq": _without_timings(record.ptq) if record else {},
            "aliases": aliases,
            "packed": packed,
        }
        tmp_meta = _temp(out, ".json.tmp", temps)
        tmp_meta.write_text(json.dumps(meta, indent=1, sort_keys=True))
        for f in (tmp_tensors, tmp_meta):
            _fsync(f)
        if not (out / name).exists():  # else: the same bytes are already there
            os.replace(tmp_tensors, out / name)
            uncommitted = out / name  # removed again if the commit below fails
        os.replace(tmp_meta, out / META)  # the commit point
        uncommitted = None
        _fsync(out)
    except OSError as exc:
        raise ArtifactError(
            f"could not write the artifact to {out}: {exc}; the previous artifact there, if "
            "any, is unchanged"
        ) from exc
    finally:
        for t in [*temps, *([uncommitted] if uncommitted else [])]:
            t.unlink(missing_ok=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    if previous is not None and previous.name != name:
        previous.unlink(missing_ok=True)
    return out


def _temp(out: Path, suffix: str, temps: list[Path]) -> Path:
    fd, name = tempfile.mkstemp(dir=out, prefix=".lowbit-", suffix=suffix)
    os.close(fd)
    temps.append(Path(name))
    return temps[-1]


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a directory) to disk where the platform allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _previous_tensor_file(out: Path) -> Path | None:
    """The tensor file that the lowbit artifact already in ``out`` names, if there is one.

    A save replaces that file and nothing else: a directory may also hold a user's own
    ``model.safetensors`` (a Hugging Face checkpoint, the source of ``quantize_lazy``), which
    must survive. A ``lowbit.json`` that is valid JSON but not lowbit's is refused, not
    overwritten; one that is not JSON (a broken earlier save) is replaced, and no file removed.
    """
    meta = _meta_json(out)
    if meta is None:
        return None
    if not _is_lowbit(meta):
        raise ArtifactError(
            f"{out / META} exists and is not lowbit metadata; refusing to overwrite it. "
            "Save the quantized model to another directory"
        )
    try:
        return _tensor_path(out, meta)
    except ArtifactError:  # a malformed entry names nothing this save may remove
        return None


def _meta_json(root: Path) -> Any:
    """``root/lowbit.json`` parsed, without any check; None when absent, too large or not JSON."""
    meta_path = root / META
    if not meta_path.is_file() or meta_path.stat().st_size > _MAX_JSON_BYTES:
        return None
    try:
        return json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None


def _is_lowbit(meta: Any) -> bool:
    return isinstance(meta, dict) and meta.get("format") == "lowbit"


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k != "seconds"}
    return value


def _check_record_covers(model: nn.Module, record: QuantizationRecord | None) -> None:
    """Every quantized layer is described in the record, or the artifact could not be loaded."""
    from lowbit.nn import QuantModule

    names = [n for n, m in model.named_modules() if isinstance(m, QuantModule)]
    missing = [n for n in names if record is None or n not in record.layers]
    if missing:
        raise InvalidModelError(
            f"{len(missing)} quantized layer(s) ({missing[:3]}) are not in the model's "
            "lowbit_record; save the model that lowbit.quantize or lowbit.qat.convert returned"
        )


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
            n = math.prod(shape)
            if not 1 <= bits <= 8 or not -(2**bits) <= qmin <= 0:
                raise ValueError(f"bits={bits}, qmin={qmin} out of range")
            if tensors[key].numel() != -(-n * bits // 8):
                raise ValueError(f"{tensors[key].numel()} bytes cannot hold {n} {bits}-bit codes")
            codes = unpack(tensors[key], bits, n).to(torch.int16) + qmin
        except (KeyError, TypeError, ValueError, RuntimeError, ConfigError) as exc:
            raise ArtifactError(f"packed tensor {key!r} cannot be unpacked: {exc}") from None
        # the storage dtype of the format: int8 for signed grids, uint8 for unsigned ones
        tensors[key] = codes.to(torch.int8 if qmin < 0 else torch.uint8).reshape(shape)


def artifact_size(path: str | os.PathLike) -> int:
    """Bytes on disk of an artifact directory: its metadata and the tensor file it names (not
    other files a user keeps there)."""
    root = Path(path)
    meta = _meta_json(root)  # no hashing: a size needs only the names
    if not _is_lowbit(meta):
        raise ArtifactError(f"{root} is not a lowbit artifact (no readable {META})")
    return (root / META).stat().st_size + _tensor_path(root, meta).stat().st_size


def model_size(model: nn.Module) -> int:
    """Size in bytes of ``model`` as lowbit saves it: the number the report calls model size."""
    with tempfile.TemporaryDirectory() as tmp:
        return artifact_size(save(model, tmp))


def _tensor_path(root: Path, meta: dict[str, Any]) -> Path:
    """The tensor file a metadata file names (format 1: the fixed name)."""
    if meta.get("format_version") == 1:
        return root / TENSORS
    name = meta.get("tensors_file")
    if not isinstance(name, str) or not TENSOR_FILE_RE.fullmatch(name):
        raise ArtifactError(f"{root / META}: entry 'tensors_file' is missing or malformed")
    return root / name  # a bare file name by the pattern: no path can escape the directory


def tensor_file(path: str | os.PathLike) -> Path:
    """The safetensors file of the artifact at ``path`` (its name changes with its content)."""
    return _read_meta(Path(path))["_tensor_path"]


def _read_meta(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a lowbit artifact directory (it does not exist)")
    meta_path = root / META
    if not meta_path.is_file():
        raise ArtifactError(f"{root} is missing {META}; was it written by lowbit.save?")
    if meta_path.stat().st_size > _MAX_JSON_BYTES:
        raise ArtifactError(f"{meta_path} is implausibly large for lowbit metadata; refusing it")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{meta_path} is corrupted (not valid JSON: {exc})") from None
    if not _is_lowbit(meta):
        raise ArtifactError(f"{meta_path} is not lowbit metadata")
    version = meta.get("format_version")
    if type(version) is not int or not 1 <= version <= FORMAT_VERSION:
        raise ArtifactError(
            f"{root} has format version {version!r}; this lowbit reads 1 to {FORMAT_VERSION}"
        )
    meta.setdefault("linearized", [])  # absent in artifacts written before it existed
    meta.setdefault("packed", {})
    check_meta_types(meta, str(meta_path))
    if meta.get("config") is not None:
        try:
            meta["config"] = QuantConfig.from_dict(meta["config"])
        except (ConfigError, TypeError, AttributeError, ValueError, KeyError,
                RecursionError) as exc:  # fmt: skip
            raise ArtifactError(f"{meta_path}: the stored config is invalid ({exc})") from None
    tensor_path = _tensor_path(root, meta)
    if not tensor_path.is_file():
        raise ArtifactError(f"{root} is missing {tensor_path.name}; was it written by lowbit.save?")
    if _sha256(tensor_path) != meta.get("tensors_sha256"):
        raise ArtifactError(
            f"{tensor_path} is corrupted: its SHA-256 does not match the one recorded at save "
            "time (truncated or modified file); re-export the model"
        )
    meta["_tensor_path"] = tensor_path
    return meta


def _rebuild(model: nn.Module, meta: dict[str, Any]) -> nn.Module:
    """Turn the float skeleton into the saved structure (folds, then quantized shells).

    Returns the model's root: the skeleton itself, or a new quantized layer when the artifact
    is one bare layer (saved from ``lowbit.quantize(nn.Linear(...))``, layer name ``""``).
    """
    try:
        linearize_(model, meta["linearized"])  # as quantize did (GPT-2's Conv1D)
        apply_folds_(model, meta["folded"])
        for name, spec in meta["layers"].items():
            cls = LAYER_TYPES.get(spec.get("type"))
            if cls is None:
                raise ArtifactError(f"layer {name!r} has unknown type {spec.get('type')!r}")
            if not name:  # the root itself cannot be swapped in place: a new module is returned
                return cls.from_spec(spec, model)
            _set(model, name, cls.from_spec(spec, model.get_submodule(name)))
        return model
    except (AttributeError, KeyError, TypeError, ValueError, ConfigError) as exc:
        raise ArtifactError(
            f"the artifact does not fit this model ({exc}); pass a float skeleton of the same "
            "architecture that was quantized"
        ) from None


@contextlib.contextmanager
def _restored_on_error(model: nn.Module):
    """Put back every submodule, parameter and buffer *object* of ``model`` if the block raises.

    Rebuilding only swaps modules and adds parameters (no tensor is written before every check
    passed), so restoring the containers restores the skeleton exactly, without copying tensors.
    """
    snapshot = [(m, dict(m._modules), dict(m._parameters), dict(m._buffers))
                for m in model.modules()]  # fmt: skip
    try:
        yield
    except BaseException:
        for m, modules, params, buffers in snapshot:
            for live, saved in ((m._modules, modules), (m._parameters, params),
                                (m._buffers, buffers)):  # fmt: skip
                live.clear()
                live.update(saved)
        raise


def _read_tensors(meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    path = meta["_tensor_path"]
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ArtifactError(f"{path} is not a readable safetensors file: {exc}") from None
    _unpack_low_bit_(tensors, meta["packed"])
    for key, target in meta["aliases"].items():
        if target not in tensors:
            raise ArtifactError(f"alias {key!r} points at missing tensor {target!r}")
        tensors[key] = tensors[target]
    for name, spec in meta["layers"].items():
        check_layer_values(name, spec, tensors)
    return tensors


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Rebuild a saved model into ``model`` (a float skeleton, modified in place) and return it.

    Every check runs before the skeleton's tensors are written; if the artifact does not fit,
    :class:`~lowbit.errors.ArtifactError` is raised and the skeleton is left as it was. A bare
    layer (``lowbit.quantize(nn.Linear(...))`` saved as is) cannot change class in place: its
    quantized layer is returned as a new module and the skeleton is left alone, so always use
    the return value.
    """
    root = Path(path)
    meta = _read_meta(root)
    tensors = _read_tensors(meta)
    skeleton = model
    with _restored_on_error(skeleton):
        model = _rebuild(skeleton, meta)
        check_tensors_fit(tensors, model.state_dict())
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:  # checked above; kept so a torch change cannot half-load
            raise ArtifactError(f"the artifact's tensors do not fit this model: {exc}") from None
    model.eval()
    if meta.get("config") is not None:
        model.lowbit_record = QuantizationRecord(
            config=meta["config"],
            folded=meta["folded"],
            linearized=meta["linearized"],
            layers=meta["layers"],
            skipped=meta["skipped"],
            ptq=meta.get("ptq", {}),
        )
    return model
