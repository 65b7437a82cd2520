"""Exceptions lowbit raises. Each message says what is wrong, where, and how to fix it."""

from __future__ import annotations

__all__ = [
    "LowbitError",
    "ConfigError",
    "UnknownPresetError",
    "CalibrationError",
    "InvalidModelError",
    "ArtifactError",
    "UnsupportedLayerError",
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


class ArtifactError(LowbitError, OSError):
    """A saved lowbit artifact is missing, corrupted, hostile, or does not fit the model."""


class UnsupportedLayerError(LowbitError, TypeError):
    """A layer type has no quantized implementation."""
