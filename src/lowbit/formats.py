"""Number formats: which values can a quantized element take?

A format is a value (frozen dataclass) with a canonical name, so it round-trips through configs:

>>> get_format("int8").qmin, get_format("int8").qmax
(-128, 127)
>>> get_format("uint4").qmax
15
>>> get_format("bf16").torch_dtype
torch.bfloat16

Integer formats of 2..16 bits (signed or unsigned) are *uniform* grids ``{qmin, ..., qmax}``;
``fp16``/``bf16`` are float passthrough formats (a cast, no scale). Non-uniform weights come in
two kinds: a :class:`GridFormat` is a fixed grid of levels scaled per block (``nf4``, ``pot4``,
``binary``, ``ternary``); a :class:`CodebookFormat` (``kmeans16``) learns its levels per layer or
per output channel. Both store ``bits``-bit indices into their levels.

>>> get_format("nf4").bits, get_format("ternary").bits, get_format("kmeans16").bits
(4, 2, 4)
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

import torch

from lowbit.errors import ConfigError, field_error
from lowbit.grids import (
    BINARY_LEVELS,
    TERNARY_LEVELS,
    normal_float_levels,
    power_of_two_levels,
)

__all__ = [
    "IntFormat",
    "FloatFormat",
    "GridFormat",
    "CodebookFormat",
    "NumberFormat",
    "WeightFormat",
    "get_format",
    "FORMAT_NAMES",
]

_INT_RE = re.compile(r"^(u?)int([0-9]{1,9})\Z")  # ASCII digits; \Z: no trailing newline
_GRID_RE = re.compile(r"^(nf|pot)([0-9]{1,9})\Z")
_KMEANS_RE = re.compile(r"^kmeans([0-9]{1,9})\Z")
_GRID_BITS = {"nf": (2, 8), "pot": (2, 6)}
_FLOATS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class _Format:
    """What every format shares: its name is its string, and it is not an integer grid."""

    name: str
    is_integer = False

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class IntFormat(_Format):
    """A uniform integer grid of ``bits`` bits: ``[-2^(b-1), 2^(b-1)-1]`` or ``[0, 2^b - 1]``."""

    bits: int
    signed: bool = True

    def __post_init__(self) -> None:
        if not _is_int(self.bits) or not 2 <= self.bits <= 16:
            raise field_error(
                "IntFormat", ("bits",), f"integer formats take 2..16 bits, got {self.bits!r}"
            )
        if not isinstance(self.signed, bool):
            raise field_error(
                "IntFormat", ("signed",), f"must be True or False, got {self.signed!r}"
            )

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


@dataclass(frozen=True)
class FloatFormat(_Format):
    """A float passthrough format: values are cast, not scaled (``fp16``, ``bf16``)."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in _FLOATS:
            raise ConfigError(
                f"unknown float format {self.name!r}; choose one of {sorted(_FLOATS)}"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return _FLOATS[self.name]

    @property
    def bits(self) -> int:
        return torch.finfo(self.torch_dtype).bits


@dataclass(frozen=True)
class GridFormat(_Format):
    """A fixed non-uniform grid: a block with scale ``s`` takes the values ``s * levels``.

    ``nf2..nf8`` (normal float, NF4 = QLoRA's), ``pot2..pot6`` (powers of two), ``binary``
    (1 bit) and ``ternary`` (2 bits). Codes are indices into the sorted levels.
    """

    name: str

    def __post_init__(self) -> None:
        key = self.name
        if not isinstance(key, str):
            raise field_error("GridFormat", ("name",), f"must be a name like 'nf4', got {key!r}")
        m = _GRID_RE.match(key)
        if key in ("binary", "ternary"):
            return
        if m is None:
            raise ConfigError(f"unknown grid format {key!r}; use nfK, potK, binary or ternary")
        lo, hi = _GRID_BITS[m.group(1)]
        if not lo <= int(m.group(2)) <= hi:
            raise ConfigError(f"{m.group(1)} grids take {lo}..{hi} bits, got {key!r}")

    @property
    def levels(self) -> tuple[float, ...]:
        if self.name == "binary":
            return BINARY_LEVELS
        if self.name == "ternary":
            return TERNARY_LEVELS
        kind, bits = _GRID_RE.match(self.name).groups()
        maker = normal_float_levels if kind == "nf" else power_of_two_levels
        return maker(int(bits))

    @property
    def bits(self) -> int:
        return max(1, math.ceil(math.log2(len(self.levels))))


@dataclass(frozen=True)
class CodebookFormat(_Format):
    """``k`` learned levels (a k-means codebook) and ``ceil(log2 k)``-bit indices into them."""

    k: int

    def __post_init__(self) -> None:
        if not _is_int(self.k) or not 2 <= self.k <= 256:
            raise field_error(
                "CodebookFormat",
                ("k",),
                f"k-means codebooks take k = 2..256 entries, got {self.k!r}",
            )

    @property
    def name(self) -> str:
        return f"kmeans{self.k}"

    @property
    def bits(self) -> int:
        return math.ceil(math.log2(self.k))


NumberFormat = IntFormat | FloatFormat | GridFormat | CodebookFormat
WeightFormat = IntFormat | GridFormat | CodebookFormat  # what a weight spec may name

# Representative names (every integer width, every grid, a few codebook sizes), e.g. for tests.
FORMAT_NAMES = tuple(
    [f"int{b}" for b in range(2, 17)]
    + [f"uint{b}" for b in range(2, 17)]
    + list(_FLOATS)
    + [f"nf{b}" for b in range(2, 9)]
    + [f"pot{b}" for b in range(2, 7)]
    + ["binary", "ternary", "kmeans4", "kmeans16", "kmeans256"]
)


# Every valid name, for "did you mean" hints.
_ALL_NAMES = (
    [f"{u}int{b}" for u in ("", "u") for b in range(2, 17)]
    + list(_FLOATS)
    + [f"{kind}{b}" for kind, (lo, hi) in _GRID_BITS.items() for b in range(lo, hi + 1)]
    + ["binary", "ternary"]
    + [f"kmeans{k}" for k in range(2, 257)]
)


def get_format(name: str | NumberFormat) -> NumberFormat:
    """Parse a format name into a format value.

    Names: ``int2..int16``, ``uint2..uint16``, ``fp16``, ``bf16``, ``nf2..nf8``, ``pot2..pot6``,
    ``binary``, ``ternary``, ``kmeans2..kmeans256``.
    """
    if isinstance(name, IntFormat | FloatFormat | GridFormat | CodebookFormat):
        return name
    if not isinstance(name, str):
        raise ConfigError(f"a number format is a name like 'int8', got {type(name).__name__}")
    try:
        return _parse(name)
    except ConfigError as exc:  # "int99" is a bad name, not a bad IntFormat.bits field
        detail = getattr(exc, "detail", str(exc))
        raise ConfigError(detail if repr(name) in detail else f"{name!r}: {detail}") from None


def _parse(name: str) -> NumberFormat:
    key = name.strip().lower()
    if key in _FLOATS:
        return FloatFormat(key)
    if key in ("binary", "ternary"):
        return GridFormat(key)
    m = _GRID_RE.match(key)
    if m is not None:  # canonical name: "nf04" -> "nf4"
        return GridFormat(f"{m.group(1)}{int(m.group(2))}")
    m = _KMEANS_RE.match(key)
    if m is not None:
        return CodebookFormat(int(m.group(1)))
    m = _INT_RE.match(key)
    if m is None:
        close = difflib.get_close_matches(key, _ALL_NAMES, n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise ConfigError(
            f"unknown number format {name!r}{hint}; use int2..int16, uint2..uint16, fp16, bf16, "
            "nf2..nf8, pot2..pot6, binary, ternary or kmeans2..kmeans256"
        )
    return IntFormat(bits=int(m.group(2)), signed=m.group(1) == "")


def _is_int(value: object) -> bool:
    """A true integer: ``bool`` is not one here (``bits=True`` is a typo, not 1 bit)."""
    return isinstance(value, int) and not isinstance(value, bool)
