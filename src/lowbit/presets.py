"""Named schemes in industry shorthand: ``W8A8``, ``W8A8-dynamic``, ``W8A16``, ``W4A16-g128``,
``FP16``, ``BF16``.

``W{w}A{a}``: weights of ``w`` bits, activations of ``a`` bits. ``A16`` means weight-only
quantization with 16-bit (bf16) activations; ``-dynamic`` means activation scales are computed
per token at run time instead of calibrated; ``-g128`` means one scale per group of 128
input weights.

>>> get_preset("W8A8").mode.value
'static'
>>> sorted(PRESETS)[:3]
['BF16', 'FP16', 'W8A16']
"""

from __future__ import annotations

import difflib

from lowbit.config import QuantMode, QuantScheme, TensorQuantSpec
from lowbit.errors import UnknownPresetError

__all__ = ["PRESETS", "get_preset", "preset_names"]

_W8_PER_CHANNEL = TensorQuantSpec(format="int8", granularity="per_channel", symmetric=True)

PRESETS: dict[str, QuantScheme] = {
    # Static: per-tensor asymmetric int8 activations calibrated on user batches.
    "W8A8": QuantScheme(
        name="W8A8",
        mode=QuantMode.STATIC,
        weight=_W8_PER_CHANNEL,
        activation=TensorQuantSpec(format="int8", granularity="per_tensor", symmetric=False),
    ),
    # Dynamic: one symmetric scale per token (row) computed from each input at run time.
    "W8A8-dynamic": QuantScheme(
        name="W8A8-dynamic",
        mode=QuantMode.DYNAMIC,
        weight=_W8_PER_CHANNEL,
        activation=TensorQuantSpec(format="int8", granularity="per_token", symmetric=True),
    ),
    # Weight-only: int8 weights, bf16 activations (the fast 16-bit type on AVX-512 BF16 CPUs).
    "W8A16": QuantScheme(
        name="W8A16", mode=QuantMode.WEIGHT_ONLY, weight=_W8_PER_CHANNEL, compute_dtype="bf16"
    ),
    # 4-bit asymmetric weights in groups of 128 (bf16 scales, int8 zero points), bf16 activations.
    "W4A16-g128": QuantScheme(
        name="W4A16-g128",
        mode=QuantMode.WEIGHT_ONLY,
        weight=TensorQuantSpec(format="uint4", granularity="per_group:128", symmetric=False),
        compute_dtype="bf16",
    ),
    "FP16": QuantScheme(name="FP16", mode=QuantMode.CAST, compute_dtype="fp16"),
    "BF16": QuantScheme(name="BF16", mode=QuantMode.CAST, compute_dtype="bf16"),
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> QuantScheme:
    """The scheme of a preset name (case-insensitive), or a clear error listing the choices."""
    if not isinstance(name, str):
        raise UnknownPresetError(f"a preset is a name like 'W8A8', got {type(name).__name__}")
    by_key = {k.lower(): v for k, v in PRESETS.items()}
    scheme = by_key.get(name.strip().lower())
    if scheme is not None:
        return scheme
    lowered = {k.lower(): k for k in PRESETS}
    close = difflib.get_close_matches(name.strip().lower(), list(lowered), n=1, cutoff=0.5)
    hint = f" Did you mean {lowered[close[0]]!r}?" if close else ""
    raise UnknownPresetError(
        f"unknown preset {name!r}.{hint} Known presets: {', '.join(preset_names())}; "
        "or pass a lowbit.QuantScheme / QuantConfig for a custom scheme."
    )
