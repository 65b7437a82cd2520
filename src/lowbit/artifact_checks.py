"""Checks that an artifact read from disk is exactly what ``lowbit.save`` writes, before any of it
touches the user's model.

An artifact comes from a file system, a download or a colleague: its SHA-256 catches accidental
damage, not a file edited on purpose and re-hashed. So :mod:`lowbit.serialization` also checks
the values: every tensor has the key, shape and dtype the rebuilt model expects (no silent casts),
scales are finite and positive, zero points and codes lie inside their format's code range. A
violation raises :class:`~lowbit.errors.ArtifactError` naming the tensor.

>>> check_codes("fc.qweight", torch.tensor([0, 3]), get_format("uint2"))
>>> check_codes("fc.qweight", torch.tensor([0, 4]), get_format("uint2"))
Traceback (most recent call last):
...
lowbit.errors.ArtifactError: tensor 'fc.qweight' holds codes outside 0..3 (the uint2 format): min 0, max 4; the file was modified after it was written
"""

from __future__ import annotations

import re
from typing import Any

import torch

from lowbit.errors import ArtifactError, ConfigError
from lowbit.formats import CodebookFormat, GridFormat, IntFormat, get_format

__all__ = ["check_meta_types", "check_tensors_fit", "check_layer_values", "check_codes",
           "TENSOR_FILE_RE"]  # fmt: skip

# v2 tensor files are named after their content: model-<first 16 hex digits of SHA-256>
TENSOR_FILE_RE = re.compile(r"model-[0-9a-f]{16}\.safetensors")
_MODIFIED = "the file was modified after it was written"


def check_meta_types(meta: dict[str, Any], where: str) -> None:
    """Types of the metadata entries that the loader walks (names as strings, lists of names)."""
    for key, kind in (("layers", dict), ("folded", list), ("aliases", dict), ("skipped", dict),
                      ("linearized", list), ("packed", dict)):  # fmt: skip
        if not isinstance(meta.get(key), kind):
            raise ArtifactError(f"{where}: entry {key!r} is missing or malformed")
    if not all(isinstance(n, str) for n in meta["linearized"]):
        raise ArtifactError(f"{where}: entry 'linearized' must list module names")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta["aliases"].items()):
        raise ArtifactError(f"{where}: entry 'aliases' must map tensor names to tensor names")
    for name, spec in meta["layers"].items():
        if not isinstance(spec, dict) or not isinstance(spec.get("scheme", {}), dict | None):
            raise ArtifactError(f"{where}: layer {name!r} has a malformed spec")
        if spec.get("scheme") is not None:
            _check_scheme(spec["scheme"], f"{where}: layer {name!r}")
    for key, info in meta["packed"].items():
        if not isinstance(info, dict) or not isinstance(info.get("shape"), list):
            raise ArtifactError(f"{where}: packed tensor {key!r} has a malformed description")
        shape = info["shape"]
        if not all(type(s) is int and s >= 0 for s in shape) or len(shape) > 8:
            raise ArtifactError(f"{where}: packed tensor {key!r} has an invalid shape {shape!r}")


def _check_scheme(scheme: dict, where: str) -> None:
    """The layer's scheme parses (the same parser ``from_spec`` uses), so rebuilding cannot fail
    half-way on a malformed one."""
    from lowbit.config import QuantScheme

    try:
        QuantScheme.from_dict(scheme)
    except (ConfigError, TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        raise ArtifactError(f"{where} has an invalid scheme ({exc})") from None


def check_tensors_fit(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Same keys, shapes and dtypes as the rebuilt model's state dict (nothing cast silently)."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ArtifactError(
            "the artifact's tensors do not fit this model: "
            + (f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} " if missing else "")
            + (f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''} " if extra else "")
            + "- pass a float skeleton of the same architecture (and configuration) as the "
            "quantized model"
        )
    for key, want in expected.items():
        got = tensors[key]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise ArtifactError(
                f"the artifact's tensors do not fit this model: {key!r} is {got.dtype} "
                f"{tuple(got.shape)} in the artifact, the model needs {want.dtype} "
                f"{tuple(want.shape)}; pass a float skeleton of the same architecture"
            )


def check_codes(key: str, codes: torch.Tensor, fmt) -> None:
    """Codes of a quantized weight inside the format's code range."""
    if isinstance(fmt, IntFormat):
        lo, hi = fmt.qmin, fmt.qmax
    elif isinstance(fmt, GridFormat):
        lo, hi = 0, len(fmt.levels) - 1
    elif isinstance(fmt, CodebookFormat):
        lo, hi = 0, fmt.k - 1
    else:
        return
    if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
        raise ArtifactError(
            f"tensor {key!r} holds codes outside {lo}..{hi} (the {fmt.name} format): min "
            f"{int(codes.min())}, max {int(codes.max())}; {_MODIFIED}"
        )


def _check_scale(key: str, t: torch.Tensor) -> None:
    t = t.float()
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ArtifactError(f"tensor {key!r} must hold finite positive scales; {_MODIFIED}")


def _format(spec: dict | None):
    if not spec or "format" not in spec:
        return None
    try:
        return get_format(spec["format"])
    except ConfigError as exc:
        raise ArtifactError(f"unknown number format in the artifact: {exc}") from None


def check_layer_values(name: str, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Scales, zero points and codes of one quantized layer (``spec`` as saved)."""
    prefix = f"{name}." if name else ""
    scheme = spec.get("scheme") or {}
    for key in ("weight_scale", "input_scale"):
        if prefix + key in tensors:
            _check_scale(prefix + key, tensors[prefix + key])
    w_fmt, a_fmt = _format(scheme.get("weight")), _format(scheme.get("activation"))
    if w_fmt is not None and prefix + "qweight" in tensors:
        check_codes(prefix + "qweight", tensors[prefix + "qweight"], w_fmt)
    if isinstance(w_fmt, IntFormat) and prefix + "weight_zero_point" in tensors:
        check_codes(prefix + "weight_zero_point", tensors[prefix + "weight_zero_point"], w_fmt)
    if isinstance(a_fmt, IntFormat) and prefix + "input_zero_point" in tensors:
        check_codes(prefix + "input_zero_point", tensors[prefix + "input_zero_point"], a_fmt)
    book = tensors.get(prefix + "weight_codebook")
    if book is not None and not bool(torch.isfinite(book.float()).all()):
        raise ArtifactError(f"tensor {prefix}weight_codebook holds NaN/Inf; {_MODIFIED}")
