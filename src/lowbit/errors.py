"""Exceptions lowbit raises. Each message says what is wrong, where, and how to fix it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "LowbitError",
    "ConfigError",
    "UnknownPresetError",
    "CalibrationError",
    "InvalidModelError",
    "ArtifactError",
    "UnsupportedLayerError",
    "NothingQuantizedWarning",
    "UnsupportedDeviceError",
    "BackendUnavailableError",
    "field_error",
    "in_field",
]


class LowbitError(Exception):
    """Base class of every error lowbit raises on purpose."""


class ConfigError(LowbitError, ValueError):
    """A configuration value is invalid (bad bit-width, granularity, mode combination...)."""


class UnknownPresetError(ConfigError, KeyError):
    """A preset name such as ``W8A8`` is not known."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable
        return str(self.args[0]) if self.args else ""


class CalibrationError(LowbitError, ValueError):
    """Calibration data is missing, empty, or not something the model accepts."""


class InvalidModelError(LowbitError, ValueError):
    """The model cannot be quantized as given (NaN/Inf weights, not an nn.Module...)."""


class UnsupportedDeviceError(InvalidModelError):
    """A model or quantized layer is asked to live off the CPU (lowbit's kernels are CPU-only)."""


class BackendUnavailableError(LowbitError, RuntimeError):
    """A runtime asked of ``lowbit.compile`` is not installed, or cannot take this model."""


class ArtifactError(LowbitError, OSError):
    """A saved lowbit artifact is missing, corrupted, hostile, or does not fit the model."""


class UnsupportedLayerError(LowbitError, TypeError):
    """A layer type has no quantized implementation."""


class NothingQuantizedWarning(UserWarning):
    """``quantize`` found no layer it could quantize: the model it returns is still float.

    ``quantize(..., strict=True)`` raises :class:`UnsupportedLayerError` instead.
    """


def field_error(
    owner: str, path: tuple[str | int, ...], message: str, kind: type[ConfigError] = ConfigError
) -> ConfigError:
    """A ``kind`` error that says where: ``"QuantConfig.overrides[0].scheme.weight: <message>"``.

    Args:
        owner: the class whose field is wrong (``"TensorQuantSpec"``).
        path: field names (``str``) and list indices (``int``) below ``owner``; ``()`` for the
            object as a whole (the message then stands alone).
        message: what is wrong and how to fix it.

    The parts are kept on the error (``owner``, ``path``, ``detail``) so that :func:`in_field`
    can lengthen the path when the owner is itself a field of a bigger config.

    >>> str(field_error("PTQOptions", ("max_rows",), "must be an integer >= 1, got 'abc'"))
    "PTQOptions.max_rows: must be an integer >= 1, got 'abc'"
    """
    where = owner + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    exc = kind(f"{where}: {message}" if path else message)
    exc.owner, exc.path, exc.detail = owner, tuple(path), message
    return exc


@contextmanager
def in_field(owner: str, *path: str | int) -> Iterator[None]:
    """Re-raise a :class:`ConfigError` from building ``owner``'s field ``path`` with the full path.

    >>> with in_field("QuantScheme", "weight"):
    ...     raise field_error("TensorQuantSpec", ("format",), "unknown number format 'int9x'")
    Traceback (most recent call last):
    lowbit.errors.ConfigError: QuantScheme.weight.format: unknown number format 'int9x'
    """
    try:
        yield
    except ConfigError as exc:
        inner = getattr(exc, "path", ())
        detail = getattr(exc, "detail", str(exc))
        raise field_error(owner, path + inner, detail, type(exc)) from None
