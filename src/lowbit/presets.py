"""Named schemes in industry shorthand: ``W8A8``, ``W8A8-dynamic``, ``W8A16``, ``W4A16-g128``,
``W4A16``, ``W3A16-g128``, ``W3A16``, ``W2A16-g64``, ``W4A8``, ``W3A8``, ``NF4``, ``POT4``, ``KMEANS16``, ``KMEANS4``,
``TERNARY``, ``BINARY``, ``FP16``, ``BF16``.

``W{w}A{a}``: weights of ``w`` bits, activations of ``a`` bits. ``A16`` means weight-only
quantization with 16-bit (bf16) activations; ``-dynamic`` means activation scales are computed
per token at run time instead of calibrated; ``-g128`` means one scale per group of 128
input weights.

>>> get_preset("W8A8").mode.value
'static'
>>> get_preset("NF4").weight.format
'nf4'
"""

from __future__ import annotations

import difflib

from lowbit.config import QuantMode, QuantScheme, TensorQuantSpec
from lowbit.errors import UnknownPresetError

__all__ = ["PRESETS", "get_preset", "preset_names"]

_W8_PER_CHANNEL = TensorQuantSpec(format="int8", granularity="per_channel", symmetric=True)
_A8_STATIC = TensorQuantSpec(format="int8", granularity="per_tensor", symmetric=False)
_A8_PER_TOKEN = TensorQuantSpec(format="int8", granularity="per_token", symmetric=True)


def _weight_only(name: str, fmt: str, granularity: str, symmetric: bool = True) -> QuantScheme:
    weight = TensorQuantSpec(format=fmt, granularity=granularity, symmetric=symmetric)
    return QuantScheme(name=name, mode=QuantMode.WEIGHT_ONLY, weight=weight, compute_dtype="bf16")


PRESETS: dict[str, QuantScheme] = {
    # Static: per-tensor asymmetric int8 activations calibrated on user batches.
    "W8A8": QuantScheme(
        name="W8A8",
        mode=QuantMode.STATIC,
        weight=_W8_PER_CHANNEL,
        activation=_A8_STATIC,
    ),
    # Dynamic: one symmetric scale per token (row) computed from each input at run time.
    "W8A8-dynamic": QuantScheme(
        name="W8A8-dynamic",
        mode=QuantMode.DYNAMIC,
        weight=_W8_PER_CHANNEL,
        activation=_A8_PER_TOKEN,
    ),
    # Weight-only: int8 weights, bf16 activations (the fast 16-bit type on AVX-512 BF16 CPUs).
    "W8A16": QuantScheme(
        name="W8A16", mode=QuantMode.WEIGHT_ONLY, weight=_W8_PER_CHANNEL, compute_dtype="bf16"
    ),
    # 4-bit asymmetric weights in groups of 128 (bf16 scales, int8 zero points), bf16 activations.
    "W4A16-g128": _weight_only("W4A16-g128", "uint4", "per_group:128", symmetric=False),
    # Per-channel asymmetric 4-bit weights (int4 kernel, scales repeated over groups).
    "W4A16": _weight_only("W4A16", "uint4", "per_channel", symmetric=False),
    "W3A16-g128": _weight_only("W3A16-g128", "uint3", "per_group:128", symmetric=False),
    "W3A16": _weight_only("W3A16", "uint3", "per_channel", symmetric=False),
    "W2A16-g64": _weight_only("W2A16-g64", "uint2", "per_group:64", symmetric=False),
    # 4-bit symmetric per-channel weights with int8 activations: the codes go straight into the
    # int8 GEMM (they are valid int8), so only the disk and memory savings differ from W8A8.
    "W4A8": QuantScheme(
        name="W4A8",
        mode=QuantMode.STATIC,
        weight=TensorQuantSpec(format="int4", granularity="per_channel", symmetric=True),
        activation=_A8_STATIC,
    ),
    "W3A8": QuantScheme(
        name="W3A8",
        mode=QuantMode.STATIC,
        weight=TensorQuantSpec(format="int3", granularity="per_channel", symmetric=True),
        activation=_A8_STATIC,
    ),
    "W4A8-dynamic": QuantScheme(
        name="W4A8-dynamic",
        mode=QuantMode.DYNAMIC,
        weight=TensorQuantSpec(format="int4", granularity="per_channel", symmetric=True),
        activation=_A8_PER_TOKEN,
    ),
    # Low-bit activations too (QAT targets): int4 / int2 codes run on the int8 kernels as they are.
    "W4A4": QuantScheme(
        name="W4A4",
        mode=QuantMode.STATIC,
        weight=TensorQuantSpec(format="int4", granularity="per_channel", symmetric=True),
        activation=TensorQuantSpec(format="int4", granularity="per_tensor", symmetric=False),
    ),
    "W2A8": QuantScheme(
        name="W2A8",
        mode=QuantMode.STATIC,
        weight=TensorQuantSpec(format="int2", granularity="per_channel", symmetric=True),
        activation=_A8_STATIC,
    ),
    # Non-uniform grids and codebooks (weight-only, bf16 activations).
    "NF4": _weight_only("NF4", "nf4", "per_group:64"),  # QLoRA: NF4 levels, absmax per 64
    "POT4": _weight_only("POT4", "pot4", "per_channel"),  # {0, ±2^-6..±1} x channel scale
    "KMEANS16": _weight_only("KMEANS16", "kmeans16", "per_tensor"),  # 16 shared values a layer
    "KMEANS4": _weight_only("KMEANS4", "kmeans4", "per_tensor"),
    "TERNARY": _weight_only("TERNARY", "ternary", "per_channel"),  # TWN {-a, 0, +a}
    "BINARY": _weight_only("BINARY", "binary", "per_channel"),  # XNOR-Net sign(w) * mean|w|
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
