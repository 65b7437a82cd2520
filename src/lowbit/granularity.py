"""Granularity: which elements share one scale and zero point?

Every granularity becomes a ``block_size``: a tuple, one entry per tensor dimension, such that each
block of that size shares one ``(scale, zero_point)``. The scale tensor then has shape
``shape[i] // block_size[i]`` in every dimension (so it broadcasts against the blocked view).

>>> Granularity.parse("per_tensor").block_size((64, 32))
(64, 32)
>>> Granularity.parse("per_channel").block_size((64, 32))      # one scale per output row
(1, 32)
>>> Granularity.parse("per_group:16").block_size((64, 32))     # groups along the input dim
(1, 16)
>>> Granularity.parse("per_token").block_size((4, 7, 32))      # one scale per row of the last dim
(1, 1, 32)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from lowbit.errors import ConfigError, field_error

__all__ = ["GranularityKind", "Granularity"]


class GranularityKind(str, Enum):
    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"
    PER_GROUP = "per_group"
    PER_TOKEN = "per_token"


@dataclass(frozen=True)
class Granularity:
    """How a tensor is split into blocks that share quantization parameters.

    Args:
        kind: per-tensor, per-channel (one scale per index of ``axis``), per-group (groups of
            ``group_size`` consecutive elements along the last, input dimension) or per-token
            (one scale per row of the last dimension; used for activations).
        axis: the channel axis for ``per_channel`` (0 = output channels of a weight).
        group_size: elements per group for ``per_group``.
    """

    kind: GranularityKind = GranularityKind.PER_TENSOR
    axis: int = 0
    group_size: int | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", GranularityKind(self.kind))
        except ValueError:
            choices = ", ".join(k.value for k in GranularityKind)
            raise field_error(
                "Granularity", ("kind",), f"unknown granularity {self.kind!r}; use one of {choices}"
            ) from None
        if not _is_int(self.axis):
            raise field_error("Granularity", ("axis",), f"must be an integer, got {self.axis!r}")
        if self.axis and self.kind is not GranularityKind.PER_CHANNEL:
            raise field_error(
                "Granularity", ("axis",), f"only applies to per_channel, not {self.kind.value}"
            )
        if self.kind is GranularityKind.PER_GROUP:
            if not _is_int(self.group_size) or self.group_size < 1:
                raise field_error(
                    "Granularity",
                    ("group_size",),
                    "per_group granularity needs a positive group_size (an integer, e.g. 128), "
                    f"got {self.group_size!r}",
                )
        elif self.group_size is not None:
            raise ConfigError(f"group_size only applies to per_group, not {self.kind.value}")

    @classmethod
    def parse(cls, text: str | Granularity) -> Granularity:
        """Parse ``per_tensor``, ``per_channel``, ``per_channel:1``, ``per_group:128``, ``per_token``."""
        if isinstance(text, Granularity):
            return text
        if not isinstance(text, str):
            raise ConfigError(
                "a granularity is a name like 'per_channel' or 'per_group:128', "
                f"got {type(text).__name__} {text!r}"
            )
        name, _, arg = text.strip().lower().partition(":")
        try:
            kind = GranularityKind(name)
        except ValueError:
            choices = ", ".join(k.value for k in GranularityKind)
            raise ConfigError(f"unknown granularity {text!r}; use one of {choices}") from None
        if kind is GranularityKind.PER_GROUP:
            if not (arg.isascii() and arg.isdigit()) or len(arg) > 9:
                raise ConfigError(f"per_group needs a size, e.g. 'per_group:128', got {text!r}")
            return cls(kind, group_size=int(arg))
        if kind is GranularityKind.PER_CHANNEL and arg:
            if not re.fullmatch(r"[+-]?[0-9]{1,9}", arg.strip()):
                raise ConfigError(f"per_channel axis must be an integer, got {text!r}")
            return cls(kind, axis=int(arg))
        if arg:
            raise ConfigError(f"{kind.value} takes no argument, got {text!r}")
        return cls(kind)

    def __str__(self) -> str:
        if self.kind is GranularityKind.PER_GROUP:
            return f"per_group:{self.group_size}"
        if self.kind is GranularityKind.PER_CHANNEL and self.axis != 0:
            return f"per_channel:{self.axis}"
        return self.kind.value

    def block_size(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The block size this granularity gives a tensor of ``shape``."""
        shape = tuple(int(s) for s in shape)
        if self.kind is GranularityKind.PER_TENSOR or not shape:
            return shape
        if self.kind is GranularityKind.PER_CHANNEL:
            if not -len(shape) <= self.axis < len(shape):
                raise ConfigError(
                    f"{self} names axis {self.axis}, but a tensor of shape {list(shape)} has "
                    f"{len(shape)} dims (axes {-len(shape)}..{len(shape) - 1}); pick one of those"
                )
            axis = self.axis % len(shape)
            return tuple(1 if i == axis else s for i, s in enumerate(shape))
        if self.kind is GranularityKind.PER_TOKEN:
            return (1,) * (len(shape) - 1) + (shape[-1],)
        size = self.group_size
        if shape[-1] % size:
            raise ConfigError(
                f"group_size {size} does not divide the last dimension {shape[-1]} of a tensor "
                f"of shape {list(shape)}; pick a divisor or exclude this layer"
            )
        return (1,) * (len(shape) - 1) + (size,)


def _is_int(value: object) -> bool:
    """A true integer: ``bool`` is not one here (``group_size=True`` is a typo, not 1)."""
    return isinstance(value, int) and not isinstance(value, bool)
