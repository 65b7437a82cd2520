"""Number formats: which values can a quantized element take?

A format is a value (frozen dataclass) with a canonical name, so it round-trips through configs:

>>> get_format("int8").qmin, get_format("int8").qmax
(-128, 127)
>>> get_format("uint4").qmax
15
>>> get_format("bf16").torch_dtype
torch.bfloat16

Integer formats of 2..16 bits (signed or unsigned) are *uniform* grids ``{qmin, ..., qmax}``;
``fp16``/``bf16`` are float passthrough formats (a cast, no scale). Non-uniform grids (binary,
ternary, NF4, power-of-two, k-means codebooks) plug in later as further ``NumberFormat`` kinds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from lowbit.errors import ConfigError

__all__ = ["IntFormat", "FloatFormat", "NumberFormat", "get_format", "FORMAT_NAMES"]

_INT_RE = re.compile(r"^(u?)int(\d+)$")
_FLOATS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class IntFormat:
    """A uniform integer grid of ``bits`` bits: ``[-2^(b-1), 2^(b-1)-1]`` or ``[0, 2^b - 1]``."""

    bits: int
    signed: bool = True

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 16:
            raise ConfigError(f"integer formats take 2..16 bits, got {self.bits}")

    @property
    def name(self) -> str:
        return f"{'' if self.signed else 'u'}int{self.bits}"

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def storage_dtype(self) -> torch.dtype:
        """Smallest torch integer dtype that holds every code (packing below 8 bits comes later)."""
        if self.bits <= 8:
            return torch.int8 if self.signed else torch.uint8
        return torch.int16 if self.signed and self.bits <= 16 else torch.int32

    @property
    def is_integer(self) -> bool:
        return True

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class FloatFormat:
    """A float passthrough format: values are cast, not scaled (``fp16``, ``bf16``)."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in _FLOATS:
            raise ConfigError(
                f"unknown float format {self.name!r}; choose one of {sorted(_FLOATS)}"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return _FLOATS[self.name]

    @property
    def bits(self) -> int:
        return torch.finfo(self.torch_dtype).bits

    @property
    def is_integer(self) -> bool:
        return False

    def __str__(self) -> str:
        return self.name


NumberFormat = IntFormat | FloatFormat

FORMAT_NAMES = tuple(
    [f"int{b}" for b in range(2, 17)] + [f"uint{b}" for b in range(2, 17)] + list(_FLOATS)
)


def get_format(name: str | NumberFormat) -> NumberFormat:
    """Parse a format name (``int8``, ``uint4``, ``int16``, ``fp16``, ``bf16``) into a format value."""
    if isinstance(name, IntFormat | FloatFormat):
        return name
    if not isinstance(name, str):
        raise ConfigError(f"a number format is a name like 'int8', got {type(name).__name__}")
    key = name.strip().lower()
    if key in _FLOATS:
        return FloatFormat(key)
    m = _INT_RE.match(key)
    if m is None:
        raise ConfigError(
            f"unknown number format {name!r}; use int2..int16, uint2..uint16, fp16 or bf16"
        )
    return IntFormat(bits=int(m.group(2)), signed=m.group(1) == "")
