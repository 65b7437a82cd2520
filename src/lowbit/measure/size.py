"""Bits per weight, read back from a saved artifact: what the quantized weights really cost.

``bits/weight = 8 * (bytes of every stored tensor of the quantized layers except biases) /
(number of weights those layers hold)``: packed codes, scales, zero points and codebooks all
count; float layers left out and biases do not (they are the same for every scheme). Read from
the safetensors header and lowbit.json only, so it measures the file, not the model in memory.

>>> import tempfile, lowbit
>>> from torch import nn
>>> with tempfile.TemporaryDirectory() as tmp:
...     bits_per_weight(lowbit.save(lowbit.quantize(nn.Linear(256, 64), "W4A16-g128"), tmp))
4.1875
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from safetensors import safe_open

from lowbit.packing import packed_nbytes

__all__ = ["bits_per_weight", "layer_weight_bytes"]

_WEIGHT_KEYS = ("qweight", "weight_scale", "weight_zero_point", "weight_codebook", "weight")
_BYTES = {"U8": 1, "I8": 1, "I16": 2, "F16": 2, "BF16": 2, "I32": 4, "F32": 4, "I64": 8, "F64": 8}


def bits_per_weight(path: str | os.PathLike) -> float:
    """Measured storage bits per weight of the quantized layers in the artifact at ``path``."""
    from lowbit.serialization import _read_meta

    root = Path(path)
    meta = _read_meta(root)  # validated, and names the tensor file (format 1 or 2)
    packed = meta.get("packed") or {}
    total_bytes, n_weights = 0, 0
    with safe_open(str(meta["_tensor_path"]), framework="pt") as f:
        stored = set(f.keys())
        for name in meta.get("layers", {}):
            prefix = f"{name}." if name else ""
            code_key = f"{prefix}qweight" if f"{prefix}qweight" in stored else f"{prefix}weight"
            if code_key not in stored:
                continue  # a tied table stored under another name: counted there
            info = packed.get(code_key)
            shape = info["shape"] if info else f.get_slice(code_key).get_shape()
            n_weights += math.prod(shape)
            for key in _WEIGHT_KEYS:
                if f"{prefix}{key}" in stored:
                    sl = f.get_slice(f"{prefix}{key}")
                    total_bytes += math.prod(sl.get_shape()) * _BYTES[sl.get_dtype()]
    if n_weights == 0:
        raise ValueError(f"{root} holds no quantized layers")
    return 8.0 * total_bytes / n_weights


def layer_weight_bytes(module: torch.nn.Module) -> int:
    """Bytes one layer's weight costs as lowbit stores it (codes bit-packed, scales, zero points,
    codebook; no bias): the per-layer version of :func:`bits_per_weight`, for float layers too.

    >>> layer_weight_bytes(torch.nn.Linear(256, 64))  # 256 * 64 float32 weights
    65536
    """
    state = module.state_dict(keep_vars=True)
    scheme = getattr(module, "scheme", None)
    spec = getattr(scheme, "weight", None)
    total = 0
    for key in _WEIGHT_KEYS:
        t = state.get(key)
        if t is None:
            continue
        if key == "qweight" and spec is not None and spec.number_format.bits < 8:
            total += packed_nbytes(t.numel(), spec.number_format.bits)
        else:
            total += t.numel() * t.element_size()
    return total
